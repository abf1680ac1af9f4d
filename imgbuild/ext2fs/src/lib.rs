//! Safe wrapper over libext2fs (placeholder; being written).
