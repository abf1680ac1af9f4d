//! The directory trees copied into a fixture's boot (FAT) and root (ext4) file systems, shaped
//! like the real images' contents.

use crate::fixture::Layout;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::Path;

/// What the trees need to know about the disk they end up on.
pub(crate) struct TreeIds<'a> {
    /// PARTUUID of the boot partition.
    pub boot_partuuid: &'a str,
    /// PARTUUID of the root partition.
    pub root_partuuid: &'a str,
    /// Number of entries to put in `/usr/share/doc`.
    pub big_dir_entries: usize,
    /// MiB of non-zero filler data in `/var/lib/filler.bin` (0 = none).
    pub filler_mib: u64,
}

/// Kernel version the fake Debian kernels are named after.
const KVER: &str = "6.1.0-30-arm64";

fn file(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn dir(root: &Path, rel: &str, mode: u32) {
    let path = root.join(rel);
    fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn link(root: &Path, rel: &str, target: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    symlink(target, &path).unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
}

/// A recognisable fake binary of `len` bytes (not all zeros, so it is really stored).
fn fake_binary(tag: &str, len: usize) -> Vec<u8> {
    tag.bytes()
        .chain(b"\x7fELF-fake".iter().copied())
        .cycle()
        .take(len)
        .collect()
}

/// Writes a [`fake_binary`] at each `(rel, tag, len)`, in order, with `mode`.
fn fake_binaries(root: &Path, mode: u32, binaries: &[(&str, &str, usize)]) {
    for &(rel, tag, len) in binaries {
        file(root, rel, &fake_binary(tag, len), mode);
    }
}

/// The Raspberry Pi 4 firmware both Pi layouts' boot partitions carry.
const PI4_FIRMWARE: [(&str, &str, usize); 2] = [
    ("start4.elf", "start4", 200 << 10),
    ("fixup4.dat", "fixup4", 5 << 10),
];

/// Raspberry Pi OS's kernels and device tree in its boot partition.
const RPIOS_KERNELS: [(&str, &str, usize); 3] = [
    ("kernel8.img", "kernel8", 1 << 20),
    ("kernel_2712.img", "kernel_2712", 256 << 10),
    ("bcm2711-rpi-4-b.dtb", "dtb", 50 << 10),
];

/// The shim and GRUB loaders in the generic image's EFI system partition.
const ESP_LOADERS: [(&str, &str, usize); 4] = [
    ("EFI/BOOT/BOOTAA64.EFI", "shim", 900 << 10),
    ("EFI/BOOT/fbaa64.efi", "fallback", 80 << 10),
    ("EFI/debian/grubaa64.efi", "grub", 1 << 20),
    ("EFI/debian/shimaa64.efi", "shim", 900 << 10),
];

/// The programs in the root file system's `/usr`.
const USR_BINARIES: [(&str, &str, usize); 4] = [
    ("usr/bin/bash", "bash", 1_200_000),
    ("usr/bin/sh", "sh", 120_000),
    ("usr/bin/systemctl", "systemctl", 300_000),
    ("usr/sbin/sshd", "sshd", 900_000),
];

/// Debian's kernel and initramfs (`vmlinuz-KVER`, `initrd.img-KVER`) in the folder `under`
/// (`""` or ending in `/`), with `mode`.
fn debian_kernel(root: &Path, under: &str, mode: u32) {
    let vmlinuz = format!("{under}vmlinuz-{KVER}");
    let initrd = format!("{under}initrd.img-{KVER}");
    let binaries = [
        (vmlinuz.as_str(), "vmlinuz", 1 << 20),
        (initrd.as_str(), "initrd", 512 << 10),
    ];
    fake_binaries(root, mode, &binaries);
}

/// Writes the boot (FAT) partition's files for `layout` under `root`.
pub(crate) fn boot_tree(root: &Path, layout: Layout, ids: &TreeIds) {
    match layout {
        Layout::RpiOs => rpios_boot(root, ids),
        Layout::DebianRaspi => raspi_firmware(root),
        Layout::GenericGpt => esp(root),
    }
}

fn rpios_boot(root: &Path, ids: &TreeIds) {
    let cmdline = format!(
        "console=serial0,115200 console=tty1 root=PARTUUID={} rootfstype=ext4 fsck.repair=yes \
         rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n",
        ids.root_partuuid
    );
    file(root, "cmdline.txt", cmdline.as_bytes(), 0o755);
    let config = "# For more options and information see\n# http://rptl.io/configtxt\n\n\
        # Uncomment some or all of these to enable the optional hardware interfaces\n\
        #dtparam=i2c_arm=on\n#dtparam=spi=on\n\n# Enable audio (loads snd_bcm2835)\n\
        dtparam=audio=on\n\ncamera_auto_detect=1\ndisplay_auto_detect=1\nauto_initramfs=1\n\
        dtoverlay=vc4-kms-v3d\nmax_framebuffers=2\narm_64bit=1\ndisable_overscan=1\narm_boost=1\n\n\
        [pi4]\n# Settings for the Raspberry Pi 4 only\ndtoverlay=dwc2,dr_mode=host\n\n[cm4]\notg_mode=1\n\n[all]\n";
    file(root, "config.txt", config.as_bytes(), 0o755);
    fake_binaries(root, 0o755, &RPIOS_KERNELS);
    fake_binaries(root, 0o755, &PI4_FIRMWARE);
    file(
        root,
        "issue.txt",
        b"Raspberry Pi reference 2024-11-19\n",
        0o755,
    );
    for overlay in [
        "vc4-kms-v3d.dtbo",
        "dwc2.dtbo",
        "disable-bt.dtbo",
        "w1-gpio.dtbo",
    ] {
        file(
            root,
            &format!("overlays/{overlay}"),
            &fake_binary(overlay, 3000),
            0o755,
        );
    }
    file(root, "overlays/README", b"Device tree overlays.\n", 0o755);
}

fn raspi_firmware(root: &Path) {
    file(
        root,
        "cmdline.txt",
        b"console=tty0 console=ttyS1,115200 root=LABEL=RASPIROOT rw fsck.repair=yes net.ifnames=0 cma=64M rootwait\n",
        0o755,
    );
    let config = format!(
        "# Switch the CPU from ARMv7 into ARMv8 (aarch64) mode\narm_64bit=1\n\nenable_uart=1\n\
         upstream_kernel=1\n\nkernel=vmlinuz-{KVER}\n# For details on the initramfs directive, see\n\
         # https://www.raspberrypi.org/forums/viewtopic.php?f=63&t=10532\ninitramfs initrd.img-{KVER}\n"
    );
    file(root, "config.txt", config.as_bytes(), 0o755);
    let sysconf = "# This file will be automatically evaluated and installed at next boot\n\
        # time, and regenerated (to avoid leaking passwords and such information).\n\
        #\n# root_pw - Set a password for the root user (by default, it allows\n\
        # for a passwordless login)\n#root_pw=FooBar\n\n\
        # root_authorized_key - Set an authorized key for a root ssh login\n#root_authorized_key=\n\n\
        # hostname - Set the system hostname.\n#hostname=rpi_XX\n";
    file(root, "sysconf.txt", sysconf.as_bytes(), 0o755);
    debian_kernel(root, "", 0o755);
    for dtb in [
        "bcm2711-rpi-4-b.dtb",
        "bcm2837-rpi-3-b.dtb",
        "bcm2711-rpi-cm4.dtb",
    ] {
        file(root, dtb, &fake_binary(dtb, 40 << 10), 0o755);
    }
    fake_binaries(root, 0o755, &PI4_FIRMWARE);
}

fn esp(root: &Path) {
    fake_binaries(root, 0o755, &ESP_LOADERS);
    file(
        root,
        "EFI/debian/grub.cfg",
        b"search.fs_uuid 00000000-0000-0000-0000-000000000000 root\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n",
        0o755,
    );
}

/// Writes the root file system's tree for `layout` under `root`.
pub(crate) fn root_tree(root: &Path, layout: Layout, ids: &TreeIds) {
    for (rel, mode) in [
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("usr/lib/systemd/system", 0o755),
        ("usr/share/doc", 0o755),
        ("etc/systemd/system/multi-user.target.wants", 0o755),
        ("etc/ssh/sshd_config.d", 0o755),
        ("home", 0o755),
        ("root", 0o700),
        ("var/lib/dpkg", 0o755),
        ("var/log", 0o755),
        ("tmp", 0o1777),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("mnt", 0o755),
        ("opt", 0o755),
        ("srv", 0o755),
    ] {
        dir(root, rel, mode);
    }
    for (name, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        link(root, name, target);
    }
    etc(root, layout, ids);
    usr(root, ids.big_dir_entries);
    boot_dir(root, layout, ids);
    file(
        root,
        "root/.bashrc",
        b"# ~/.bashrc: executed by bash(1) for non-login shells.\n",
        0o644,
    );
    file(
        root,
        "var/lib/dpkg/status",
        b"Package: base-files\nStatus: install ok installed\n",
        0o644,
    );
    if ids.filler_mib > 0 {
        filler(root, ids.filler_mib);
    }
}

fn etc(root: &Path, layout: Layout, ids: &TreeIds) {
    const USERS: &[(&str, u32, u32, &str, &str)] = &[
        ("root", 0, 0, "/root", "/bin/bash"),
        ("daemon", 1, 1, "/usr/sbin", "/usr/sbin/nologin"),
        ("bin", 2, 2, "/bin", "/usr/sbin/nologin"),
        ("sys", 3, 3, "/dev", "/usr/sbin/nologin"),
        ("sync", 4, 65534, "/bin", "/bin/sync"),
        ("man", 6, 12, "/var/cache/man", "/usr/sbin/nologin"),
        ("www-data", 33, 33, "/var/www", "/usr/sbin/nologin"),
        ("_apt", 42, 65534, "/nonexistent", "/usr/sbin/nologin"),
        ("nobody", 65534, 65534, "/nonexistent", "/usr/sbin/nologin"),
        ("messagebus", 100, 107, "/nonexistent", "/usr/sbin/nologin"),
        ("sshd", 101, 65534, "/run/sshd", "/usr/sbin/nologin"),
    ];
    let mut passwd = String::new();
    let mut shadow = String::new();
    for (name, uid, gid, home, shell) in USERS {
        passwd.push_str(&format!("{name}:x:{uid}:{gid}:{name}:{home}:{shell}\n"));
        // Debian's raspi image ships root with an empty password (console login without one).
        let pw = if *name == "root" && layout == Layout::DebianRaspi {
            ""
        } else {
            "*"
        };
        shadow.push_str(&format!("{name}:{pw}:19800:0:99999:7:::\n"));
    }
    file(root, "etc/passwd", passwd.as_bytes(), 0o644);
    file(root, "etc/shadow", shadow.as_bytes(), 0o640);
    chown(root.join("etc/shadow"), Some(0), Some(42)).expect("chown etc/shadow");
    let group = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\n\
        man:x:12:\nsudo:x:27:\nwww-data:x:33:\nshadow:x:42:\nusers:x:100:\nmessagebus:x:107:\n\
        nogroup:x:65534:\n";
    file(root, "etc/group", group.as_bytes(), 0o644);
    file(
        root,
        "etc/gshadow",
        b"root:*::\nsudo:*::\nshadow:*::\n",
        0o640,
    );
    chown(root.join("etc/gshadow"), Some(0), Some(42)).expect("chown etc/gshadow");
    let hostname = match layout {
        Layout::RpiOs => "raspberrypi",
        Layout::DebianRaspi => "rpi4-20250101",
        Layout::GenericGpt => "localhost",
    };
    file(
        root,
        "etc/hostname",
        format!("{hostname}\n").as_bytes(),
        0o644,
    );
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n127.0.1.1\t\t{hostname}\n"
    );
    file(root, "etc/hosts", hosts.as_bytes(), 0o644);
    file(root, "etc/fstab", fstab(layout, ids).as_bytes(), 0o644);
    // The dot files Debian's bash and base-files put in /etc/skel (adduser copies them to new homes).
    let skel: [(&str, &[u8]); 3] = [
        (
            ".bashrc",
            b"# ~/.bashrc: executed by bash(1) for non-login shells.\n",
        ),
        (
            ".profile",
            b"# ~/.profile: executed by the command interpreter for login shells.\n",
        ),
        (
            ".bash_logout",
            b"# ~/.bash_logout: executed by bash(1) when login shell exits.\n",
        ),
    ];
    for (name, text) in skel {
        file(root, &format!("etc/skel/{name}"), text, 0o644);
    }
    if layout == Layout::DebianRaspi {
        // raspi-firmware's settings file (the package ships it with every line commented out).
        file(
            root,
            "etc/default/raspi-firmware",
            b"# CMA pool size\n#CMA=64M\n",
            0o644,
        );
    }
    file(
        root,
        "usr/lib/os-release",
        b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n",
        0o644,
    );
    link(root, "etc/os-release", "../usr/lib/os-release");
    if layout == Layout::RpiOs {
        file(
            root,
            "etc/rpi-issue",
            b"Raspberry Pi reference 2024-11-19\n",
            0o644,
        );
    }
    file(
        root,
        "etc/ssh/sshd_config",
        b"Include /etc/ssh/sshd_config.d/*.conf\n#PermitRootLogin prohibit-password\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nPrintMotd no\nAcceptEnv LANG LC_*\nSubsystem\tsftp\t/usr/lib/openssh/sftp-server\n",
        0o644,
    );
    for i in 0..300 {
        file(
            root,
            &format!("etc/fixture-{i:03}.conf"),
            format!("# dummy configuration file {i}\nvalue={i}\n").as_bytes(),
            0o644,
        );
    }
    let wants = "etc/systemd/system/multi-user.target.wants";
    let mut enabled = vec!["cron.service", "systemd-timesyncd.service"];
    if layout == Layout::GenericGpt {
        enabled.push("ssh.service");
    }
    for unit in enabled {
        link(
            root,
            &format!("{wants}/{unit}"),
            &format!("/lib/systemd/system/{unit}"),
        );
    }
    link(
        root,
        "etc/systemd/system/sshd.service",
        "/lib/systemd/system/ssh.service",
    );
}

fn fstab(layout: Layout, ids: &TreeIds) -> String {
    match layout {
        Layout::RpiOs => format!(
            "proc            /proc           proc    defaults          0       0\n\
             PARTUUID={}  /boot/firmware  vfat    defaults          0       2\n\
             PARTUUID={}  /               ext4    defaults,noatime  0       1\n",
            ids.boot_partuuid, ids.root_partuuid
        ),
        Layout::DebianRaspi => {
            "# The root file system has fs_passno=1 as per fstab(5) for automatic fsck.\n\
             LABEL=RASPIROOT / ext4 rw 0 1\n\
             # All other file systems have fs_passno=2 as per fstab(5) for automatic fsck.\n\
             LABEL=RASPIFIRM /boot/firmware vfat rw 0 2\n"
                .to_string()
        }
        Layout::GenericGpt => format!(
            "PARTUUID={} / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1\n\
             PARTUUID={} /boot/efi vfat defaults 0 0\n",
            ids.root_partuuid, ids.boot_partuuid
        ),
    }
}

fn usr(root: &Path, big_dir_entries: usize) {
    fake_binaries(root, 0o755, &USR_BINARIES);
    let units = "usr/lib/systemd/system";
    file(
        root,
        &format!("{units}/ssh.service"),
        b"[Unit]\nDescription=OpenBSD Secure Shell server\nAfter=network.target auditd.service\n\n[Service]\nExecStartPre=/usr/sbin/sshd -t\nExecStart=/usr/sbin/sshd -D $SSHD_OPTS\nType=notify\n\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n",
        0o644,
    );
    file(
        root,
        &format!("{units}/cron.service"),
        b"[Unit]\nDescription=Regular background program processing daemon\n\n[Service]\nExecStart=/usr/sbin/cron -f\n\n[Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    file(
        root,
        &format!("{units}/systemd-timesyncd.service"),
        b"[Unit]\nDescription=Network Time Synchronization\n\n[Service]\nExecStart=/lib/systemd/systemd-timesyncd\n\n[Install]\nWantedBy=sysinit.target\n",
        0o644,
    );
    file(
        root,
        &format!("{units}/getty@.service"),
        b"[Unit]\nDescription=Getty on %I\n\n[Service]\nExecStart=-/sbin/agetty -o '-p -- \\\\u' --noclear - $TERM\n\n[Install]\nWantedBy=getty.target\n",
        0o644,
    );
    for i in 0..big_dir_entries {
        file(
            root,
            &format!("usr/share/doc/package-with-a-long-name-{i:05}/copyright"),
            format!("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: package {i}\n").as_bytes(),
            0o644,
        );
    }
}

fn boot_dir(root: &Path, layout: Layout, ids: &TreeIds) {
    match layout {
        Layout::RpiOs | Layout::DebianRaspi => dir(root, "boot/firmware", 0o755),
        Layout::GenericGpt => {
            dir(root, "boot/efi", 0o755);
            let grub = format!(
                "menuentry 'Debian GNU/Linux' {{\n\tlinux /boot/vmlinuz-{KVER} root=PARTUUID={} ro console=tty0 console=ttyS0,115200\n\tinitrd /boot/initrd.img-{KVER}\n}}\n",
                ids.root_partuuid
            );
            file(root, "boot/grub/grub.cfg", grub.as_bytes(), 0o644);
        }
    }
    if layout != Layout::RpiOs {
        debian_kernel(root, "boot/", 0o644);
    }
}

fn filler(root: &Path, mib: u64) {
    let path = root.join("var/lib/filler.bin");
    let mut f =
        fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let chunk = fake_binary("filler", 1 << 20);
    for _ in 0..mib {
        f.write_all(&chunk).expect("write filler");
    }
}
