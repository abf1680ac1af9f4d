//! FAT patching (placeholder; being written).
