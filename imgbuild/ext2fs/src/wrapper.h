/* Headers bindgen reads to generate the libext2fs declarations (see build.rs). */
#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>
#include <ext2fs/ext2_err.h>
#include <et/com_err.h>
