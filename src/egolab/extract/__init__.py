"""Feature extraction: from raw videos to the feature files the feature-based tasks read."""
