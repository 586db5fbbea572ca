//! The lab's config files (deploy/lab) load and say what the lab needs.
//! They name the key file `scripts/lab.sh start` makes; here each is loaded
//! with that path pointing at a fresh key in a temporary directory. No root
//! needed.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use mpbond::client::redirect::ConnectMode;
use mpbond::config::{ClientConfig, ConcentratorConfig};
use mpbond::crypto::StaticSecret;

/// Where the lab's key files live (`scripts/lab.sh start` makes them).
const LAB_RUN: &str = "/run/mpbond-lab/";

/// A temporary directory holding a key, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("mpbond-lab-configs-{}-{test}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        for end in ["client", "client2", "concentrator"] {
            let secret = StaticSecret::generate().expect("key");
            let key = dir.join(format!("{end}.key"));
            fs::write(&key, format!("{}\n", secret.to_base64())).expect("write key");
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key");
            fs::write(
                dir.join(format!("{end}.key.pub")),
                format!("{}\n", secret.public_key()),
            )
            .expect("write public key");
        }
        Self(dir)
    }

    /// deploy/lab/NAME with the key path replaced, written here.
    fn config(&self, name: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/lab")
            .join(name);
        let text = fs::read_to_string(&src).expect("read deploy/lab config");
        assert!(
            text.contains(&format!("{LAB_RUN}client.key"))
                || text.contains(&format!("{LAB_RUN}concentrator.key")),
            "{name} must use the keys lab.sh makes in {LAB_RUN}"
        );
        let path = self.0.join(name);
        let dir = format!("{}/", self.0.display());
        fs::write(&path, text.replace(LAB_RUN, &dir)).expect("write config");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn client(dir: &Dir, name: &str) -> ClientConfig {
    ClientConfig::load(&dir.config(name)).unwrap_or_else(|e| panic!("deploy/lab/{name}: {e}"))
}

#[test]
fn the_lab_clients_reach_the_lab_concentrator_over_both_lines() {
    let dir = Dir::new("clients");
    for (name, mode, lte_backup) in [
        ("client.toml", ConnectMode::Fast, false),
        ("client-strict.toml", ConnectMode::Strict, false),
        ("client-backup.toml", ConnectMode::Fast, true),
        ("client-cold.toml", ConnectMode::Fast, false),
    ] {
        let c = client(&dir, name);
        assert_eq!(c.concentrator.to_string(), "10.77.9.2:7300", "{name}");
        assert_eq!(c.id.as_str(), "lab", "{name}");
        assert_eq!(c.connect_mode, mode, "{name}");
        assert_eq!(c.tun.name, "mpb0", "{name}");
        assert_eq!(c.tun.ipv4.to_string(), "172.29.77.1/30", "{name}");
        assert_eq!(c.tun.ipv6.to_string(), "fd00:6d70:62::1/126", "{name}");
        let uplinks: Vec<_> = c
            .uplinks
            .iter()
            .map(|u| {
                (
                    u.name.as_str(),
                    u.interface.as_str(),
                    u.gateway.map(|g| g.to_string()),
                    u.gateway6.map(|g| g.to_string()),
                    u.backup,
                )
            })
            .collect();
        let datagram = c.datagram.expect("the lab client has the datagram tunnel");
        assert_eq!(datagram.address_v4.to_string(), "10.77.0.2", "{name}");
        assert_eq!(
            datagram.address_v6.map(|a| a.to_string()),
            Some("fd77::2".to_owned()),
            "{name}"
        );
        assert_eq!(datagram.port, 7300, "{name}");
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            uplinks,
            vec![
                ("dsl", "dsl0", some("10.77.1.1"), some("fd77:1::1"), false),
                (
                    "lte",
                    "lte0",
                    some("10.77.2.1"),
                    some("fd77:2::1"),
                    lte_backup
                ),
            ],
            "{name}"
        );
    }
}

#[test]
fn the_second_lab_client_has_one_line_and_its_own_tunnel_addresses() {
    let dir = Dir::new("client2");
    let c = client(&dir, "client2.toml");
    assert_eq!(c.concentrator.to_string(), "10.77.9.2:7300");
    assert_eq!(c.id.as_str(), "lab2");
    let uplinks: Vec<_> = c
        .uplinks
        .iter()
        .map(|u| {
            (
                u.name.as_str(),
                u.interface.as_str(),
                u.gateway.map(|g| g.to_string()),
            )
        })
        .collect();
    assert_eq!(uplinks, [("wan", "wan0", Some("10.77.3.1".to_owned()))]);
    let datagram = c
        .datagram
        .expect("the second client has the datagram tunnel");
    assert_eq!(datagram.address_v4.to_string(), "10.77.0.3");
    assert_eq!(
        datagram.address_v6.map(|a| a.to_string()),
        Some("fd77::3".to_owned())
    );
}

#[test]
fn the_lab_concentrator_allows_the_lab_server_only() {
    let dir = Dir::new("concentrator");
    let c = ConcentratorConfig::load(&dir.config("concentrator.toml"))
        .unwrap_or_else(|e| panic!("deploy/lab/concentrator.toml: {e}"));
    assert_eq!(c.listen.to_string(), "0.0.0.0:7300");
    let clients: Vec<_> = c
        .clients
        .iter()
        .map(|c| {
            let tunnel = c.tunnel.expect("tunnel addresses");
            (
                c.id.as_str(),
                tunnel.v4.to_string(),
                tunnel.v6.map(|a| a.to_string()),
                c.public_key.is_some(),
            )
        })
        .collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        clients,
        [
            ("lab", "10.77.0.2".to_owned(), some("fd77::2"), true),
            ("lab2", "10.77.0.3".to_owned(), some("fd77::3"), true),
        ]
    );
    let datagram = c
        .datagram
        .as_ref()
        .expect("the lab concentrator has the exit");
    assert_eq!(datagram.tun, "mpbc0");
    assert_eq!(datagram.ipv4.to_string(), "10.77.0.1/24");
    assert_eq!(
        datagram.ipv6.map(|n| n.to_string()),
        Some("fd77::1/64".to_owned())
    );
    assert_eq!(datagram.port, 7300);
    let allow: Vec<String> = c.policy.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["198.51.100.0/24", "2001:db8:100::/64"]);
    assert!(c.policy.deny.is_empty());
    let policy = mpbond::concentrator::policy::Policy::new(c.policy.allow, c.policy.deny);
    for (dst, allowed) in [
        ("198.51.100.10:80", true),
        ("[2001:db8:100::10]:80", true),
        ("10.77.9.2:22", false),
        ("10.77.1.1:80", false),
        ("127.0.0.1:7300", false),
        ("[::1]:22", false),
        ("[fd77:9::2]:22", false),
        ("169.254.169.254:80", false),
        ("10.77.0.3:9", false),
        ("[fd77::3]:9", false),
    ] {
        let addr = dst.parse().expect("address");
        assert_eq!(policy.check(addr).is_ok(), allowed, "{dst}");
    }
}
