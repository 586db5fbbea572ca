//! The Debian package, as a user gets it: `scripts/package.sh` builds it
//! (cargo-deb) from the binary cargo built for this test, `dpkg -i`
//! installs it into a scratch root (`dpkg --root`, so the machine's own
//! package database and files are left alone), and the test checks what
//! landed where, that the installed `mpbond --version` runs, that
//! `systemd-analyze verify` accepts the installed units with the installed
//! binary and man pages, and that a purge takes it all away again.
//!
//! The maintainer scripts run too (`--force-script-chrootless`: the scratch
//! root has no shell to chroot into); they see `DPKG_ROOT` and leave the
//! host's systemd alone. Needs root (dpkg sets the files' owners), dpkg,
//! systemd-analyze and man (scripts/deps.sh installs them) and cargo-deb
//! (scripts/package.sh installs it).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory for the package and the root it is installed
/// into, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("mpbond-package-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd`, failing the test with its output unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes sure target/release/mpbond is there for `package.sh --no-build`:
/// under `cargo test --release` (the test command) it is the binary cargo
/// built for this test; otherwise it is built, as the lab harness does.
fn release_binary() {
    if cfg!(debug_assertions) {
        run(Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--bin", "mpbond"])
            .current_dir(root()));
    } else {
        let bin = Path::new(env!("CARGO_BIN_EXE_mpbond"));
        assert!(
            bin.ends_with("release/mpbond"),
            "{} is not the release binary package.sh packages",
            bin.display()
        );
    }
}

/// Builds the package into `dir`; its path.
fn build_package(dir: &Path) -> PathBuf {
    release_binary();
    let out = run(Command::new(root().join("scripts/package.sh"))
        .args(["--no-build", "--out"])
        .arg(dir)
        .current_dir(root())
        .stderr(Stdio::inherit()));
    let text = stdout(&out);
    let deb = PathBuf::from(text.lines().last().unwrap_or_default().trim());
    assert!(
        deb.is_file() && deb.starts_with(dir),
        "package.sh printed no package in {}:\n{text}",
        dir.display()
    );
    deb
}

/// An empty dpkg database under `root`.
fn dpkg_root(root: &Path) {
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        fs::create_dir_all(root.join(dir)).expect("scratch root");
    }
    for file in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        fs::write(root.join(file), "").expect("scratch root");
    }
}

fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        // The scratch root has no shell to run maintainer scripts in; run
        // them here with DPKG_ROOT set, which they honour.
        .arg("--force-script-chrootless")
        .arg("--log=/dev/null");
    cmd
}

/// Every file the package must install, and its mode.
const FILES: &[(&str, u32)] = &[
    ("usr/bin/mpbond", 0o755),
    ("usr/lib/systemd/system/mpbond-client.service", 0o644),
    ("usr/lib/systemd/system/mpbond-concentrator.service", 0o644),
    ("usr/share/doc/mpbond/examples/client.toml", 0o644),
    ("usr/share/doc/mpbond/examples/concentrator.toml", 0o644),
    ("usr/share/doc/mpbond/DEPLOY.md", 0o644),
    ("usr/share/doc/mpbond/README.md", 0o644),
    ("usr/share/doc/mpbond/copyright", 0o644),
    ("usr/share/man/man1/mpbond.1.gz", 0o644),
    ("usr/share/man/man1/mpbond-client.1.gz", 0o644),
    ("usr/share/man/man1/mpbond-concentrator.1.gz", 0o644),
    ("usr/share/man/man1/mpbond-keygen.1.gz", 0o644),
    ("usr/share/man/man1/mpbond-status.1.gz", 0o644),
    ("usr/share/bash-completion/completions/mpbond", 0o644),
    ("usr/share/zsh/vendor-completions/_mpbond", 0o644),
    ("usr/share/fish/vendor_completions.d/mpbond.fish", 0o644),
];

/// What the package ships from the repository as it is.
const COPIED: &[(&str, &str)] = &[
    (
        "deploy/systemd/mpbond-client.service",
        "usr/lib/systemd/system/mpbond-client.service",
    ),
    (
        "deploy/systemd/mpbond-concentrator.service",
        "usr/lib/systemd/system/mpbond-concentrator.service",
    ),
    (
        "deploy/client.toml",
        "usr/share/doc/mpbond/examples/client.toml",
    ),
    (
        "deploy/concentrator.toml",
        "usr/share/doc/mpbond/examples/concentrator.toml",
    ),
    ("deploy/README.md", "usr/share/doc/mpbond/DEPLOY.md"),
    ("README.md", "usr/share/doc/mpbond/README.md"),
];

#[test]
fn the_package_installs_the_program_units_docs_and_completions() {
    assert_eq!(
        stdout(&run(Command::new("id").arg("-u"))).trim(),
        "0",
        "this test installs a package with dpkg (file owners): run it as root"
    );
    let scratch = Scratch::new();
    let deb = build_package(&scratch.0.join("deb"));

    // Control fields: the name, the version of this build, the libraries
    // it links and nft.
    let fields = stdout(&run(Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&deb)
        .args(["Package", "Version", "Depends", "Section"])));
    let version = env!("CARGO_PKG_VERSION");
    assert!(fields.contains("Package: mpbond\n"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {version}-1\n")),
        "{fields}"
    );
    assert!(fields.contains("Section: net\n"), "{fields}");
    let depends = fields
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends: {fields}"));
    assert!(
        depends.contains("libc6") && depends.contains("nftables"),
        "{depends}"
    );

    // dpkg -i into the scratch root. Its dependencies (libc6, nftables)
    // are the host's: the scratch root has none.
    let target = scratch.0.join("root");
    dpkg_root(&target);
    run(dpkg(&target)
        .args(["--force-depends", "--install"])
        .arg(&deb));
    let status = stdout(&run(dpkg(&target).args(["--status", "mpbond"])));
    assert!(status.contains("Status: install ok installed"), "{status}");

    for (path, mode) in FILES {
        let meta = fs::metadata(target.join(path))
            .unwrap_or_else(|e| panic!("{path} is not installed: {e}"));
        assert!(meta.is_file(), "{path} is not a file");
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{path}");
    }
    let listed = stdout(&run(dpkg(&target).args(["--listfiles", "mpbond"])));
    for (path, _) in FILES {
        assert!(
            listed.lines().any(|l| l == format!("/{path}")),
            "dpkg -L does not list /{path}:\n{listed}"
        );
    }
    for (source, installed) in COPIED {
        assert!(
            fs::read(root().join(source)).ok() == fs::read(target.join(installed)).ok(),
            "/{installed} differs from {source}"
        );
    }
    // No config files in /etc: the examples are documentation.
    assert!(!target.join("etc/mpbond").exists());

    // The installed program runs and says its version.
    let bin = target.join("usr/bin/mpbond");
    let out = stdout(&run(Command::new(&bin).arg("--version")));
    assert_eq!(out, format!("mpbond {version}\n"));

    // Man pages name the options; the completions offer the commands.
    let page = stdout(&run(
        Command::new("zcat").arg(target.join("usr/share/man/man1/mpbond-client.1.gz"))
    ));
    assert!(page.contains("\\-\\-config"), "{page}");
    let bash = target.join("usr/share/bash-completion/completions/mpbond");
    run(Command::new("bash").arg("-n").arg(&bash));
    let bash = fs::read_to_string(&bash).expect("bash completions");
    for command in ["client", "concentrator", "keygen", "status"] {
        assert!(bash.contains(command), "bash completions lack {command}");
    }
    assert!(!bash.contains("generate"), "a hidden command is offered");

    verify_units(&scratch.0, &target);

    // A purge leaves nothing of the package behind.
    run(dpkg(&target).args(["--purge", "mpbond"]));
    for (path, _) in FILES {
        assert!(!target.join(path).exists(), "{path} is left after a purge");
    }
}

/// `systemd-analyze verify` accepts the installed units, run with the
/// installed binary (ExecStart must be executable) and man pages
/// (Documentation=man:...): copies of them whose ExecStart points into the
/// scratch root, and MANPATH at its man pages. Any warning fails, not only
/// errors (an unknown key is only a warning). The hardening must stay
/// where it is: `systemd-analyze security` rates each unit 3.0 or better
/// ("OK").
fn verify_units(scratch: &Path, target: &Path) {
    let units = scratch.join("units");
    fs::create_dir_all(&units).expect("units dir");
    let bin = target.join("usr/bin/mpbond");
    let mut copies = Vec::new();
    for name in ["mpbond-client.service", "mpbond-concentrator.service"] {
        let text = fs::read_to_string(target.join("usr/lib/systemd/system").join(name))
            .expect("installed unit");
        let exec = "ExecStart=/usr/bin/mpbond ";
        assert!(text.contains(exec), "{name} does not run /usr/bin/mpbond");
        let copy = units.join(name);
        fs::write(
            &copy,
            text.replace(exec, &format!("ExecStart={} ", bin.display())),
        )
        .expect("write unit");
        copies.push(copy);
    }
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .args(&copies)
        .env("MANPATH", target.join("usr/share/man")));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    for copy in &copies {
        run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=30", "--no-pager"])
            .arg(copy));
    }
}
