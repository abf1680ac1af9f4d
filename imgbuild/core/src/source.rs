//! Decompression of the base image (placeholder; being written).
