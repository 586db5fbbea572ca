//! The netlink code against the real kernel, each test in a network
//! namespace of its own (`mpbt-nl-PID-N`, apart from the lab's `mpb-*`),
//! checked with the `ip` tool. They need root and fail without it.

use std::net::IpAddr;
use std::panic;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::sys::{enter_netns, interface_index};

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace, deleted on drop (also when a test fails).
struct TestNs {
    name: String,
}

impl TestNs {
    /// A namespace with one uplink-like interface `d0`: the end of a veth
    /// pair (this kernel has no `dummy` driver) with carrier, 10.77.1.2/24
    /// and fd77:1::2/64.
    fn with_uplink() -> Self {
        let name = format!(
            "mpbt-nl-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"]);
        ns.ip(&["link", "set", "d0p", "up"]);
        ns.ip(&["link", "set", "d0", "up"]);
        ns.ip(&["addr", "add", "10.77.1.2/24", "dev", "d0"]);
        ns.ip(&["addr", "add", "fd77:1::2/64", "dev", "d0", "nodad"]);
        ns
    }

    /// `ip -N -n NAME ARGS`, which must succeed; its output.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-N", "-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Runs `f` on a thread inside the namespace; a panic there fails the
    /// test after the namespace is gone.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                enter_netns(&self.name).expect("enter the test namespace");
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| panic::resume_unwind(panic))
        })
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {} failed (these tests need root): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The output's lines, trimmed, for exact comparisons.
fn lines(out: &str) -> Vec<String> {
    out.lines().map(|l| l.trim().to_owned()).collect()
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn d0() -> u32 {
    interface_index("d0").expect("d0 exists")
}

fn endpoint(id: u8, a: &str, ifindex: Option<u32>, flags: EndpointFlags) -> MptcpEndpoint {
    MptcpEndpoint {
        id,
        addr: addr(a),
        port: 0,
        ifindex,
        flags,
    }
}

const SUBFLOW: EndpointFlags = EndpointFlags {
    signal: false,
    subflow: true,
    backup: false,
    fullmesh: false,
    implicit: false,
};

#[test]
fn handles_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<MptcpPm>();
}

#[test]
fn mptcp_limits_roundtrip() {
    let ns = TestNs::with_uplink();
    ns.run(|| {
        let pm = MptcpPm::open().expect("open mptcp_pm");
        let limits = MptcpLimits {
            subflows: 3,
            add_addr_accepted: 2,
        };
        pm.set_limits(limits).expect("set limits");
        assert_eq!(pm.limits().expect("get limits"), limits);
        assert_eq!(
            lines(&ns.ip(&["mptcp", "limits", "show"])),
            ["add_addr_accepted 2 subflows 3"]
        );

        let too_many = MptcpLimits {
            subflows: 200,
            add_addr_accepted: 0,
        };
        let err = pm.set_limits(too_many).expect_err("over the kernel's cap");
        assert_eq!(err.errno(), Some(libc::EINVAL));
        assert_eq!(
            err.to_string(),
            "cannot set the MPTCP limits to subflows 200 add_addr_accepted 0"
        );
        assert_eq!(pm.limits().expect("get limits"), limits);
    });
}

#[test]
fn mptcp_endpoints_add_list_change_delete() {
    let ns = TestNs::with_uplink();
    ns.run(|| {
        let pm = MptcpPm::open().expect("open mptcp_pm");
        let d0 = d0();
        let backup = EndpointFlags {
            backup: true,
            ..SUBFLOW
        };
        pm.add_endpoint(&endpoint(0, "10.77.1.2", Some(d0), SUBFLOW))
            .expect("add v4 endpoint, kernel picks the id");
        pm.add_endpoint(&endpoint(5, "fd77:1::2", Some(d0), backup))
            .expect("add v6 backup endpoint with id 5");
        let fullmesh = EndpointFlags {
            fullmesh: true,
            ..SUBFLOW
        };
        pm.add_endpoint(&endpoint(9, "10.77.2.2", None, fullmesh))
            .expect("add endpoint without dev");

        let mut list = pm.endpoints().expect("list endpoints");
        list.sort_by_key(|ep| ep.id);
        assert_eq!(
            list,
            [
                endpoint(1, "10.77.1.2", Some(d0), SUBFLOW),
                endpoint(5, "fd77:1::2", Some(d0), backup),
                endpoint(9, "10.77.2.2", None, fullmesh),
            ]
        );
        assert_eq!(
            lines(&ns.ip(&["mptcp", "endpoint", "show"])),
            [
                "10.77.1.2 id 1 subflow dev d0",
                "fd77:1::2 id 5 subflow backup dev d0",
                "10.77.2.2 id 9 subflow fullmesh",
            ]
        );

        pm.set_endpoint_backup(1, true).expect("backup on");
        pm.set_endpoint_backup(5, false).expect("backup off");
        // Unlike `ip mptcp endpoint change id 9 backup`, this keeps fullmesh.
        pm.set_endpoint_backup(9, true)
            .expect("backup on, fullmesh kept");
        assert_eq!(
            lines(&ns.ip(&["mptcp", "endpoint", "show"])),
            [
                "10.77.1.2 id 1 subflow backup dev d0",
                "fd77:1::2 id 5 subflow dev d0",
                "10.77.2.2 id 9 subflow backup fullmesh",
            ]
        );
        pm.set_endpoint_backup(1, false).expect("backup off again");
        assert_eq!(
            lines(&ns.ip(&["mptcp", "endpoint", "show", "id", "1"])),
            ["10.77.1.2 id 1 subflow dev d0"]
        );

        let err = pm
            .add_endpoint(&endpoint(0, "10.77.1.2", Some(d0), SUBFLOW))
            .expect_err("same address again");
        assert!(err.is_already_exists(), "{err:?}");
        assert_eq!(err.to_string(), "cannot add MPTCP endpoint 10.77.1.2 (d0)");
        let err = pm
            .add_endpoint(&endpoint(5, "10.77.3.2", None, SUBFLOW))
            .expect_err("id 5 is taken");
        assert_eq!(err.errno(), Some(libc::EBUSY));
        assert!(!err.is_already_exists());

        for id in [1, 5, 9] {
            pm.del_endpoint(id).expect("delete endpoint");
        }
        assert_eq!(pm.endpoints().expect("list endpoints"), []);
        assert_eq!(ns.ip(&["mptcp", "endpoint", "show"]), "");

        let err = pm.del_endpoint(77).expect_err("no endpoint 77");
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(err.to_string(), "cannot delete MPTCP endpoint id 77");
        let err = pm
            .set_endpoint_backup(77, true)
            .expect_err("no endpoint 77");
        assert!(err.is_not_found(), "{err:?}");
        let err = pm.del_endpoint(0).expect_err("id 0 is not an endpoint");
        assert!(!err.is_not_found());
    });
}
