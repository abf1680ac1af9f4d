import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

/**
 * Test stand-in for the AWS IoT Greengrass nucleus installer (lib/Greengrass.jar of the nucleus zip),
 * used by the QEMU field test because the real nucleus cannot be downloaded in CI.
 *
 * <p>It checks what first boot hands it, the way the real installer would need it: the -Droot and
 * -Dlog.store properties, exactly the options --trusted-plugin (the pinned plugin jar), --init-config
 * (the rendered config: every expected line, the device's serial number, no placeholder left),
 * --component-default-user ggc_user:ggc_group and --setup-system-service true, the users and
 * Docker/Java that earlier steps installed. Any mismatch: a "FIELD-STANDIN ERROR" line and exit 1.
 *
 * <p>Otherwise it does what the real installer does with --setup-system-service true
 * (aws-greengrass/aws-greengrass-nucleus: easysetup/GreengrassSetup.java, SystemdUtils.java,
 * scripts/greengrass.service.template) and nothing more: it lays out ROOT/alts/init/distro with the
 * loader (here: the stand-in nucleus lib/field-nucleus.py and the AWS IoT Device SDK under lib/python,
 * shipped in this zip), copies the init config to ROOT/config/config.yaml, writes
 * /etc/systemd/system/greengrass.service from the real template, runs systemctl daemon-reload,
 * unmask, stop, start, enable, and exits 0. It does NOT provision and does not open the claim
 * certificate or key: the FleetProvisioningByClaim plugin does that later, inside the nucleus process
 * that greengrass.service starts (field-nucleus.py). It writes the marker ROOT/field-standin.marker.
 *
 * <p>Expected values come from field-expect.properties inside this jar (written by tests/field/run.sh).
 */
public final class GreengrassSetup {
    private static final List<String> errors = new ArrayList<>();

    private GreengrassSetup() {}

    public static void main(String[] args) throws Exception {
        Properties expect = new Properties();
        try (InputStream in = GreengrassSetup.class.getResourceAsStream("/field-expect.properties")) {
            if (in == null) {
                fail("field-expect.properties missing from the stand-in jar");
                return;
            }
            expect.load(in);
        }
        Map<String, String> opts = parseArgs(args);
        String root = System.getProperty("root", "");
        check(root.equals(expect.getProperty("root")), "-Droot=" + root + ", expected " + expect.getProperty("root"));
        check("FILE".equals(System.getProperty("log.store")), "-Dlog.store=" + System.getProperty("log.store") + ", expected FILE");
        check("root".equals(System.getProperty("user.name")), "runs as " + System.getProperty("user.name") + ", expected root");
        check("ggc_user:ggc_group".equals(opts.get("--component-default-user")),
                "--component-default-user " + opts.get("--component-default-user") + ", expected ggc_user:ggc_group");
        check("true".equals(opts.get("--setup-system-service")),
                "--setup-system-service " + opts.get("--setup-system-service") + ", expected true");
        String plugin = opts.getOrDefault("--trusted-plugin", "");
        check(Paths.get(plugin).getFileName() != null
                && Paths.get(plugin).getFileName().toString().equals(expect.getProperty("plugin_name")),
                "--trusted-plugin " + plugin + " is not named " + expect.getProperty("plugin_name"));
        checkSha(plugin, expect.getProperty("plugin_sha256"), "--trusted-plugin");
        String serial = deviceSerial();
        check(!serial.isEmpty(), "no serial number on the device (imgbuild.serial= or device-tree serial-number)");
        checkConfig(opts.getOrDefault("--init-config", ""), expect, serial);
        checkSystem();
        if (!errors.isEmpty()) {
            for (String e : errors) {
                System.out.println("FIELD-STANDIN ERROR: " + e);
            }
            System.exit(1);
        }
        install(Paths.get(root), opts.get("--init-config"), serial);
        System.out.println("FIELD-STANDIN OK serial=" + serial);
    }

    /** The options, each exactly once; anything else is an error. */
    private static Map<String, String> parseArgs(String[] args) {
        List<String> known = List.of("--trusted-plugin", "--init-config", "--component-default-user", "--setup-system-service");
        Map<String, String> opts = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (!known.contains(a)) {
                check(false, "unexpected argument '" + a + "'");
            } else if (i + 1 >= args.length) {
                check(false, a + " without a value");
            } else if (opts.put(a, args[++i]) != null) {
                check(false, a + " given twice");
            }
        }
        for (String k : known) {
            check(opts.containsKey(k), "missing " + k);
        }
        return opts;
    }

    /** The serial first boot should have used: kernel command line override, else the device tree. */
    private static String deviceSerial() {
        String value = "";
        for (String word : readOr("/proc/cmdline").trim().split("\\s+")) {
            if (word.startsWith("imgbuild.serial=")) {
                value = word.substring("imgbuild.serial=".length());
            }
        }
        if (value.isEmpty()) {
            String dt = readOr("/sys/firmware/devicetree/base/serial-number");
            int nul = dt.indexOf('\0');
            value = nul >= 0 ? dt.substring(0, nul) : dt;
        }
        return value.replaceAll("[^A-Za-z0-9_-]", "");
    }

    private static void checkConfig(String path, Properties expect, String serial) throws Exception {
        if (!Files.isRegularFile(Paths.get(path))) {
            check(false, "--init-config " + path + " is not a file");
            return;
        }
        String text = Files.readString(Paths.get(path), StandardCharsets.UTF_8);
        List<String> lines = new ArrayList<>();
        for (String l : text.split("\n")) {
            lines.add(normalize(l));
        }
        check(!text.contains("@SERIAL_NUMBER@"), "the config still holds @SERIAL_NUMBER@");
        check(lines.contains("SerialNumber: " + serial), "the config has no SerialNumber: " + serial);
        check(lines.contains("ThingName: " + serial), "the config has no ThingName: " + serial);
        for (int i = 1; expect.containsKey("config." + i); i++) {
            String want = expect.getProperty("config." + i);
            check(lines.contains(want), "the config lacks the line '" + want + "'");
        }
    }

    /** A YAML "key: value" line without indentation and without quotes around key and value. */
    private static String normalize(String line) {
        String l = line.trim();
        int colon = l.startsWith("\"") ? l.indexOf("\":") + 1 : l.indexOf(':');
        if (colon <= 0) {
            return l;
        }
        return unquote(l.substring(0, colon).trim()) + ": " + unquote(l.substring(colon + 1).trim());
    }

    private static String unquote(String s) {
        if (s.length() >= 2 && (s.startsWith("\"") && s.endsWith("\"") || s.startsWith("'") && s.endsWith("'"))) {
            return s.substring(1, s.length() - 1);
        }
        return s;
    }

    /** What earlier first-boot steps must have done before the installer runs. */
    private static void checkSystem() {
        String passwd = readOr("/etc/passwd");
        String group = readOr("/etc/group");
        check(passwd.contains("\nggc_user:") || passwd.startsWith("ggc_user:"), "no ggc_user in /etc/passwd");
        check(group.contains("\nggc_group:"), "no ggc_group in /etc/group");
        boolean inDocker = false;
        for (String l : group.split("\n")) {
            if (l.startsWith("docker:") && List.of(l.substring(l.lastIndexOf(':') + 1).split(",")).contains("ggc_user")) {
                inDocker = true;
            }
        }
        check(inDocker, "ggc_user is not in group docker");
        check(Files.isExecutable(Paths.get("/usr/sbin/dockerd")), "no /usr/sbin/dockerd (Docker not installed)");
        check(Files.isRegularFile(Paths.get("/etc/sudoers.d/imgbuild-greengrass")), "no /etc/sudoers.d/imgbuild-greengrass");
    }

    /** Writes what the real installer writes, then enables and starts greengrass.service; no provisioning. */
    private static void install(Path root, String initConfig, String serial) throws Exception {
        Path lib = Paths.get(GreengrassSetup.class.getProtectionDomain().getCodeSource().getLocation().toURI()).getParent();
        Path distro = root.resolve("alts/init/distro");
        copyTree(lib, distro.resolve("lib"));
        Path bin = distro.resolve("bin");
        Files.createDirectories(bin);
        Path loader = bin.resolve("loader");
        Files.writeString(loader, "#!/bin/sh\n# field test stand-in loader: the stand-in nucleus (lib/field-nucleus.py)\n"
                + "PYTHONPATH=" + root + "/alts/current/distro/lib/python exec /usr/bin/python3 "
                + root + "/alts/current/distro/lib/field-nucleus.py " + root + "\n");
        Files.setPosixFilePermissions(loader, PosixFilePermissions.fromString("rwxr-xr-x"));
        Path current = root.resolve("alts/current");
        Files.deleteIfExists(current);
        Files.createSymbolicLink(current, root.resolve("alts/init"));
        Files.createDirectories(root.resolve("config"));
        Files.copy(Paths.get(initConfig), root.resolve("config/config.yaml"), StandardCopyOption.REPLACE_EXISTING);
        Files.createDirectories(root.resolve("logs"));
        // scripts/greengrass.service.template of the nucleus, placeholders filled as SystemdUtils does
        Files.writeString(Paths.get("/etc/systemd/system/greengrass.service"),
                "[Unit]\nDescription=Greengrass Core\nAfter=network.target\nAfter=time-sync.target\n\n"
                        + "[Service]\nType=simple\nPIDFile=" + root + "/alts/loader.pid\nRemainAfterExit=no\n"
                        + "Restart=on-failure\nRestartSec=10\n"
                        + "ExecStart=/bin/sh -c \"exec " + root + "/alts/current/distro/bin/loader >> " + root
                        + "/logs/loader.log 2>&1\"\nKillMode=mixed\n\n"
                        + "[Install]\nWantedBy=multi-user.target\n");
        run("systemctl", "daemon-reload");
        run("systemctl", "unmask", "greengrass.service");
        run("systemctl", "stop", "greengrass.service");
        run("systemctl", "start", "greengrass.service");
        run("systemctl", "enable", "greengrass.service");
        Files.writeString(root.resolve("field-standin.marker"), "serial=" + serial + "\n");
    }

    private static void copyTree(Path from, Path to) throws IOException {
        try (java.util.stream.Stream<Path> paths = Files.walk(from)) {
            for (Path p : (Iterable<Path>) paths::iterator) {
                Path dest = to.resolve(from.relativize(p).toString());
                if (Files.isDirectory(p)) {
                    Files.createDirectories(dest);
                } else {
                    Files.copy(p, dest, StandardCopyOption.REPLACE_EXISTING);
                }
            }
        }
    }

    private static void run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).inheritIO().start();
        int rc = p.waitFor();
        if (rc != 0) {
            System.out.println("FIELD-STANDIN ERROR: '" + String.join(" ", cmd) + "' exited " + rc);
            System.exit(1);
        }
    }

    private static void checkSha(String path, String expected, String what) throws Exception {
        Path p = Paths.get(path == null ? "" : path);
        if (!Files.isRegularFile(p)) {
            check(false, what + " " + path + " is not a file");
            return;
        }
        byte[] digest = MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(p));
        StringBuilder hex = new StringBuilder();
        for (byte b : digest) {
            hex.append(String.format("%02x", b));
        }
        check(hex.toString().equals(expected), what + " " + path + " has sha256 " + hex + ", expected " + expected);
    }

    private static String readOr(String path) {
        try {
            return new String(Files.readAllBytes(Paths.get(path)), StandardCharsets.UTF_8);
        } catch (IOException e) {
            return "";
        }
    }

    private static void check(boolean ok, String message) {
        if (!ok) {
            errors.add(message);
        }
    }

    private static void fail(String message) {
        System.out.println("FIELD-STANDIN ERROR: " + message);
        System.exit(1);
    }
}
