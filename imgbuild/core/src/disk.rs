//! Partition tables and file-system probes (placeholder; being written).
