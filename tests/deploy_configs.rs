//! The example configs in deploy/ (the package's
//! /usr/share/doc/mpbond/examples) load with the program's own parser, and
//! the two ends agree: the client's tunnel addresses are the ones the
//! concentrator gives it. Every `*.toml` directly in deploy/ is an example
//! and is loaded here (the lab's, in deploy/lab, are tests/lab_configs.rs's).
//!
//! The examples name key files beside them (`client.key`,
//! `concentrator.pub`, ...), as the deployment guide makes them; each is
//! loaded from a temporary directory holding fresh keys under those
//! names. No root needed.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use mpbond::config::{control, ClientConfig, ConcentratorConfig};
use mpbond::crypto::StaticSecret;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// A temporary directory with the examples and the key files they name,
/// removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "mpbond-deploy-configs-{}-{test}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        let client = StaticSecret::generate().expect("key");
        let concentrator = StaticSecret::generate().expect("key");
        let secret = |name: &str, key: &StaticSecret| {
            let path = dir.join(name);
            fs::write(&path, format!("{}\n", key.to_base64())).expect("write key");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod key");
        };
        secret("client.key", &client);
        secret("concentrator.key", &concentrator);
        // As the guide copies them: the VPS's concentrator.key.pub to the
        // router as concentrator.pub, the router's client.key.pub to the
        // VPS as home.pub.
        fs::write(
            dir.join("concentrator.pub"),
            format!("{}\n", concentrator.public_key()),
        )
        .expect("write public key");
        fs::write(dir.join("home.pub"), format!("{}\n", client.public_key()))
            .expect("write public key");
        Self(dir)
    }

    /// deploy/NAME, copied here beside the keys.
    fn config(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::copy(deploy().join(name), &path).unwrap_or_else(|e| panic!("copy deploy/{name}: {e}"));
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The names of the `*.toml` files directly in deploy/.
fn examples() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(deploy())
        .expect("read deploy/")
        .map(|entry| entry.expect("deploy/ entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_example_loads_as_the_role_its_keys_say() {
    let dir = Dir::new("roles");
    let names = examples();
    assert_eq!(names, ["client.toml", "concentrator.toml"]);
    for name in &names {
        let path = dir.config(name);
        let (role, socket) =
            control::socket_of(&path).unwrap_or_else(|e| panic!("deploy/{name}: {e}"));
        // The units run each with /etc/mpbond/ROLE.toml, so the default
        // socket is /run/mpbond/ROLE-ROLE.sock, in the unit's
        // RuntimeDirectory.
        assert_eq!(format!("{role}.toml"), *name, "deploy/{name}");
        assert!(
            socket.starts_with(control::RUN_DIR),
            "deploy/{name}: socket {} outside {}",
            socket.display(),
            control::RUN_DIR
        );
        match role {
            "client" => {
                ClientConfig::load(&path).unwrap_or_else(|e| panic!("deploy/{name}: {e}"));
            }
            "concentrator" => {
                ConcentratorConfig::load(&path).unwrap_or_else(|e| panic!("deploy/{name}: {e}"));
            }
            other => panic!("deploy/{name}: unknown role {other}"),
        }
    }
}

#[test]
fn the_home_router_and_the_vps_agree() {
    let dir = Dir::new("agree");
    let client = ClientConfig::load(&dir.config("client.toml")).expect("deploy/client.toml");
    let conc = ConcentratorConfig::load(&dir.config("concentrator.toml"))
        .expect("deploy/concentrator.toml");

    // Two lines, both carrying traffic, found by interface name.
    let uplinks: Vec<_> = client
        .uplinks
        .iter()
        .map(|u| (u.name.as_str(), u.interface.as_str(), u.backup))
        .collect();
    assert_eq!(uplinks, [("dsl", "ppp0", false), ("lte", "wwan0", false)]);

    // The client reaches the concentrator's port, TCP and UDP.
    assert_eq!(client.concentrator.port(), conc.listen.port());
    let exit = conc
        .datagram
        .as_ref()
        .expect("the VPS has the datagram exit");
    let datagram = client.datagram.expect("the router has the datagram tunnel");
    assert_eq!(datagram.port, exit.port);

    // The client's id, keys and tunnel addresses are the ones the
    // concentrator has for it.
    let known = conc
        .clients
        .iter()
        .find(|c| c.id.as_str() == client.id.as_str())
        .expect("the concentrator knows the client's id");
    let (secret, concentrator_public) = client.identity.as_ref().expect("a key pair");
    assert_eq!(known.public_key, Some(secret.public_key()));
    let conc_secret = conc.private_key.as_ref().expect("the VPS's key");
    assert_eq!(*concentrator_public, conc_secret.public_key());
    assert_eq!(
        known.key.to_base64(),
        client.key.to_base64(),
        "both ends derive the same connect key"
    );
    let tunnel = known.tunnel.expect("tunnel addresses");
    assert_eq!(tunnel.v4, datagram.address_v4);
    assert_eq!(tunnel.v6, datagram.address_v6);

    // Metrics never on an address the internet reaches by default: the
    // router's LAN, the VPS's loopback.
    let metrics = client.control.metrics.expect("client metrics");
    assert!(
        metrics.ip().to_string().starts_with("192.168."),
        "{metrics}"
    );
    let metrics = conc.control.metrics.expect("concentrator metrics");
    assert!(metrics.ip().is_loopback(), "{metrics}");
}
