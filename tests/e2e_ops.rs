//! plan, status and doctor around a real start on LXC (through the test
//! bed's Proxmox start sequence): plan shows the change and writes nothing,
//! the start does it, status reports what post-start found, and then plan
//! has nothing to do and doctor finds nothing wrong with the container.

mod e2e;

use std::time::Duration;

use e2e::*;

fn json(r: &Run) -> serde_json::Value {
    let out = r.ok();
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn plan_status_doctor_around_a_real_start() {
    let bed = Bed::new();
    let pty = bed.pty_serial();
    let vmid = 990_175;
    let id = vmid.to_string();
    let mut ct = bed
        .container(vmid)
        .service_user()
        .conf(&format!(
            "lxc.mount.entry: {} dev/ttyUSB0 none bind,optional,create=file",
            pty.by_id.display()
        ))
        .init("su -s /bin/sh svc -c 'exec sleep 1000' &\nwhile :; do sleep 3600; done\n")
        .hook(Hook::Binary)
        .create();

    // Before: a plan, and nothing written.
    let (conf0, subgid0) = (ct.pve_conf(), bed.subgid());
    let plan = bed.cli(&["plan", &id]);
    let text = plan.ok();
    assert!(
        text.contains(&format!("--- a/etc/pve/lxc/{vmid}.conf\n")),
        "{text}"
    );
    assert!(text.contains("\n+lxc.idmap: g 20 20 1\n"), "{text}");
    assert!(
        text.contains("for container gid 20 -> host gid 20"),
        "{text}"
    );
    if !subgid0.lines().any(|l| l == "root:20:1") {
        assert!(text.contains("\n+root:20:1\n"), "{text}");
    }
    assert_eq!(ct.pve_conf(), conf0);
    assert_eq!(bed.subgid(), subgid0);
    let s = json(&bed.cli(&["status", &id, "--json"]));
    assert_eq!(s["vmid"], vmid);
    assert_eq!(
        s["idmap"],
        serde_json::json!(["u 0 100000 65536", "g 0 100000 65536"])
    );
    assert!(s["runtime_user"].is_null());

    // The start does what the plan said.
    ct.start().expect_started();
    assert!(ct.pve_conf().contains("lxc.idmap: g 20 20 1\n"));
    assert!(
        wait_until(Duration::from_secs(15), || ct
            .state()
            .is_some_and(|v| v["runtime_user"]["uid"] == 1000)),
        "no runtime user recorded: {:?}",
        ct.state()
    );

    let s = json(&bed.cli(&["status", &id, "--json"]));
    assert_eq!(s["runtime_user"]["name"], "svc");
    assert_eq!(s["runtime_user"]["uid"], 1000);
    let idmap: Vec<&str> = s["idmap"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(idmap.contains(&"g 20 20 1"), "{s}");
    assert!(
        s["owned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "lxc.idmap: g 20 20 1"),
        "{s}"
    );
    assert!(
        s["subid"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["covered"] == true),
        "{s}"
    );
    assert_eq!(
        s["devices"][0]["node"]
            .as_str()
            .map(|n| n.starts_with("/dev/pts/")),
        Some(true),
        "{s}"
    );
    let text = bed.cli(&["status", &id]);
    assert!(text.ok().contains("runtime user: svc uid 1000"), "{text}");

    // The container config and the subid files are done; what is left can
    // only be for the generated config of the next start (post-start's
    // findings, like the detected user's mount hook), which PVE rewrites at
    // every start.
    let again = bed.cli(&["plan", &id]);
    let text = again.ok();
    let files: Vec<&str> = text.lines().filter(|l| l.starts_with("--- ")).collect();
    assert!(
        files.is_empty() || files == [format!("--- a/var/lib/lxc/{vmid}/config").as_str()],
        "{text}"
    );
    if files.is_empty() {
        assert_eq!(
            text,
            format!("nothing to do: pre-start would change no file for {vmid}\n")
        );
    }

    let doctor = bed.cli(&["doctor", &id]);
    let report = &doctor.stdout;
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with(&format!("fail  {vmid}:"))),
        "{report}"
    );
    assert!(
        report.contains(&format!("ok    {vmid}: ID map valid (4 lines) and covered")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "ok    {vmid}: hookscript local:snippets/e2e-{vmid}-pct-passthrough is this binary"
        )),
        "{report}"
    );
    ct.stop();
}
