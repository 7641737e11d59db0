//! `doctor`'s verdicts: each check turns facts (file texts, stat results,
//! state) into ok, warn or fail with a concrete fix. Pure; `cmd::doctor`
//! gathers the facts and prints.

use std::fmt;

use crate::model::state::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    /// `host`, or the container's VMID.
    pub subject: String,
    pub message: String,
    /// What to do; `None` for ok.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(subject: &str, message: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Ok,
            subject: subject.to_string(),
            message: message.into(),
            fix: None,
        }
    }
    pub fn warn(subject: &str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Warn,
            subject: subject.to_string(),
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn fail(subject: &str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            verdict: Verdict::Fail,
            subject: subject.to_string(),
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4}  {}: {}",
            self.verdict.as_str(),
            self.subject,
            self.message
        )?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// The report and its summary line; exit code 1 if any check failed.
pub fn render(checks: &[Check]) -> (String, u8) {
    let mut out = String::new();
    for c in checks {
        out.push_str(&c.to_string());
        out.push('\n');
    }
    let count = |v| checks.iter().filter(|c| c.verdict == v).count();
    let (ok, warn, fail) = (
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail),
    );
    out.push_str(&format!("{ok} ok, {warn} warn, {fail} fail\n"));
    (out, u8::from(fail > 0))
}

/// `newuidmap` and `newgidmap`: LXC needs them for every custom map.
pub fn shadow_tools(newuidmap: bool, newgidmap: bool) -> Check {
    let missing: Vec<&str> = [("newuidmap", newuidmap), ("newgidmap", newgidmap)]
        .iter()
        .filter(|(_, present)| !present)
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        Check::ok("host", "newuidmap and newgidmap are installed")
    } else {
        Check::fail(
            "host",
            format!(
                "{} not found in /usr/bin; unprivileged containers with a custom map cannot start",
                missing.join(" and ")
            ),
            "apt-get install uidmap",
        )
    }
}

/// The shape of a subid file: present, a final newline, no junk lines.
/// `unparsed` lists the 1-based numbers of non-blank, non-comment lines that
/// are not `owner:start:count`.
pub fn subid_shape(path: &str, text: Option<&str>, unparsed: &[usize]) -> Vec<Check> {
    let Some(text) = text else {
        return vec![Check::fail(
            "host",
            format!("{path} does not exist; newuidmap/newgidmap refuse every map"),
            format!("echo 'root:100000:65536' > {path}"),
        )];
    };
    let mut out = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        out.push(Check::fail(
            "host",
            format!("{path}: the last line has no newline; shadow 4.19 and later refuse the whole file, and every unprivileged container fails to start"),
            format!("echo >> {path}"),
        ));
    }
    if !unparsed.is_empty() {
        let lines: Vec<String> = unparsed.iter().map(ToString::to_string).collect();
        out.push(Check::warn(
            "host",
            format!(
                "{path}: line {} is not owner:start:count; shadow ignores it",
                lines.join(", ")
            ),
            format!("fix or delete that line in {path}"),
        ));
    }
    if out.is_empty() {
        out.push(Check::ok(
            "host",
            format!("{path} parses and ends with a newline"),
        ));
    }
    out
}

/// A `subid:` line in nsswitch.conf makes shadow ignore the files.
pub fn nsswitch(has_subid_line: bool) -> Check {
    if has_subid_line {
        Check::warn(
            "host",
            "/etc/nsswitch.conf has a subid: line, so shadow ignores /etc/subuid and /etc/subgid and what pct-passthrough writes there",
            "remove the subid: line from /etc/nsswitch.conf, or grant root the ranges in that service",
        )
    } else {
        Check::ok(
            "host",
            "/etc/subuid and /etc/subgid are in use (no subid: line in /etc/nsswitch.conf)",
        )
    }
}

/// What doctor knows about a container's hookscript file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookFile {
    /// The volume could not be resolved to a path.
    Unresolvable(String),
    Missing(String),
    NotExecutable(String),
    /// Executable; `same_as_this` when it is byte for byte this binary.
    Present {
        path: String,
        same_as_this: bool,
    },
}

/// Is the hookscript registered, present, executable, and this version?
/// `ours` is the file name pct-passthrough is installed under.
pub fn hookscript(
    vmid: &str,
    volume: Option<&str>,
    file: Option<&HookFile>,
    version: &str,
) -> Check {
    let register = format!("/usr/share/pct-passthrough/install/install.sh {vmid}");
    let Some(volume) = volume else {
        return Check::warn(
            vmid,
            "no hookscript is registered, so pct-passthrough does not run for this container",
            register,
        );
    };
    let ours = volume.rsplit('/').next() == Some("pct-passthrough");
    match file {
        Some(HookFile::Unresolvable(e)) => Check::fail(
            vmid,
            format!("hookscript {volume}: {e}; the start fails"),
            "fix the storage, or register the hookscript again with install.sh",
        ),
        Some(HookFile::Missing(p)) => Check::fail(
            vmid,
            format!("hookscript {volume} ({p}) does not exist on this node; the start fails"),
            format!("run install.sh on this node, or copy the binary to {p}"),
        ),
        Some(HookFile::NotExecutable(p)) => Check::fail(
            vmid,
            format!("hookscript {volume} ({p}) is not executable; the start fails"),
            format!("chmod 755 {p}"),
        ),
        Some(HookFile::Present { path, same_as_this }) => {
            if !ours && !same_as_this {
                Check::warn(
                    vmid,
                    format!("the hookscript is {volume}, not pct-passthrough"),
                    format!("{register} (keeps {volume} as chain)"),
                )
            } else if *same_as_this {
                Check::ok(
                    vmid,
                    format!("hookscript {volume} is this binary (pct-passthrough {version})"),
                )
            } else {
                Check::warn(
                    vmid,
                    format!("hookscript {volume} ({path}) differs from this binary (pct-passthrough {version})"),
                    "re-run install.sh to put this version on the snippets storage",
                )
            }
        }
        None => Check::fail(
            vmid,
            format!("hookscript {volume}: not checked"),
            "re-run doctor",
        ),
    }
}

/// What doctor found for one device the container names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// As named in the config (`dev0`, `lxc.mount.entry`, policy).
    pub source: String,
    pub path: String,
    /// Where it resolved to (`/dev/ttyUSB0`), `None` if missing.
    pub node: Option<String>,
    /// Missing means the start fails (`devN`, a required policy device)
    /// rather than being skipped (an `optional` bind).
    pub required: bool,
    /// A `/dev/serial/by-id/` link that points to the same node.
    pub by_id: Option<String>,
    /// USB attributes of a serial node, from sysfs.
    pub usb: Option<UsbAttrs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbAttrs {
    pub vendor: String,
    pub product: String,
    pub serial: Option<String>,
}

/// Kernel names that move between boots with plug order.
fn unstable_name(path: &str) -> bool {
    let Some(name) = path.strip_prefix("/dev/") else {
        return false;
    };
    ["ttyUSB", "ttyACM", "ttyAMA", "hidraw"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A udev rule that gives a serial adapter a stable name. Permissions come
/// from the GID 20 passthrough, so the rule needs no chown or MODE.
pub fn udev_rule(kernel: &str, usb: Option<&UsbAttrs>) -> String {
    let name = kernel.trim_start_matches("/dev/");
    match usb {
        Some(u) => {
            let serial = u
                .serial
                .as_ref()
                .map(|s| format!(", ATTRS{{serial}}==\"{s}\""))
                .unwrap_or_default();
            format!(
                "SUBSYSTEM==\"tty\", ATTRS{{idVendor}}==\"{}\", ATTRS{{idProduct}}==\"{}\"{serial}, SYMLINK+=\"serial/{name}-stable\"",
                u.vendor, u.product
            )
        }
        None => format!(
            "SUBSYSTEM==\"tty\", ATTRS{{idVendor}}==\"<vendor>\", ATTRS{{idProduct}}==\"<product>\", ATTRS{{serial}}==\"<serial>\", SYMLINK+=\"serial/{name}-stable\" (values from: udevadm info -a -n /dev/{name})"
        ),
    }
}

/// Present, and named by a path that survives a reboot and a replug.
pub fn device(vmid: &str, d: &DeviceFacts) -> Check {
    let Some(node) = &d.node else {
        let msg = format!("{} {} does not exist", d.source, d.path);
        let fix = format!("plug the device in, or fix the path in {}", d.source);
        return if d.required {
            Check::fail(vmid, format!("{msg}; the start fails"), fix)
        } else {
            Check::warn(vmid, format!("{msg}; it is skipped at start"), fix)
        };
    };
    if unstable_name(&d.path) {
        let fix = match &d.by_id {
            Some(link) => format!("name it by its stable link: {link}"),
            None => format!(
                "no /dev/serial/by-id link points to it; add a udev rule to /etc/udev/rules.d/99-serial-stable.rules: {}, then 'udevadm control --reload && udevadm trigger' and use /dev/serial/{}-stable",
                udev_rule(&d.path, d.usb.as_ref()),
                d.path.trim_start_matches("/dev/")
            ),
        };
        return Check::warn(
            vmid,
            format!(
                "{} {}: the kernel name can change at the next boot or replug",
                d.source, d.path
            ),
            fix,
        );
    }
    if d.path != *node {
        Check::ok(vmid, format!("{} {} is present ({node})", d.source, d.path))
    } else {
        Check::ok(vmid, format!("{} {} is present", d.source, d.path))
    }
}

/// A render node's GID inside the container belongs to another group.
/// `node_gid` is the GID the node has inside (the `devN` `gid=`, or the host
/// GID for a 1:1 passthrough).
pub fn render_group(vmid: &str, path: &str, node_gid: u32, state: Option<&State>) -> Option<Check> {
    let groups = &state?.container_groups;
    if groups.is_empty() {
        return None;
    }
    let owner = groups
        .iter()
        .find(|(_, &g)| g == node_gid)
        .map(|(n, _)| n.as_str());
    let render = groups.get("render").copied();
    match (owner, render) {
        (Some(name), _) if name != "render" && name != "video" => Some(Check::warn(
            vmid,
            format!("{path} has GID {node_gid} inside the container, which is the group '{name}' there, not render"),
            match render {
                Some(r) => format!("give the node the container's render GID: set gid={r} on its devN entry"),
                None => "create a render group inside with a free GID, and set that gid= on the devN entry".to_string(),
            },
        )),
        (None, Some(r)) if r != node_gid => Some(Check::warn(
            vmid,
            format!("{path} has GID {node_gid} inside the container, but the render group there is {r}"),
            format!("set gid={r} on the devN entry of {path}"),
        )),
        _ => Some(Check::ok(vmid, format!("{path}: GID {node_gid} is the render group inside"))),
    }
}

/// Host device groups whose GID is another group inside the container, as
/// post-start recorded them (host render 104 is `_ssh` inside, for example).
pub fn group_collisions(vmid: &str, state: Option<&State>) -> Vec<Check> {
    let Some(s) = state else {
        return Vec::new();
    };
    s.group_collisions
        .iter()
        .map(|c| {
            let fix = match s.container_groups.get(&c.host_name) {
                Some(g) => format!(
                    "give the device the container's own {} GID: set gid={g} on its devN entry",
                    c.host_name
                ),
                None => format!(
                    "create a {} group inside the container with a free GID, then set that gid= on the devN entry",
                    c.host_name
                ),
            };
            Check::warn(
                vmid,
                format!(
                    "host group {} (GID {}) is the group '{}' inside the container, so a bind or 1:1 map of the node gives it to '{}'",
                    c.host_name, c.gid, c.container_name, c.container_name
                ),
                fix,
            )
        })
        .collect()
}

/// The service user detected after start, and whether it kept its groups.
pub fn runtime_user(vmid: &str, state: Option<&State>) -> Check {
    let Some(u) = state.and_then(|s| s.runtime_user.as_ref()) else {
        return Check::ok(
            vmid,
            "no runtime user detected yet; post-start detects it at the first start with the hook",
        );
    };
    let who = match &u.name {
        Some(n) => format!("{n} (uid {})", u.uid),
        None => format!("uid {}", u.uid),
    };
    if u.keeps_supplementary_groups {
        Check::ok(
            vmid,
            format!("service user {who} keeps its supplementary groups"),
        )
    } else {
        Check::warn(
            vmid,
            format!("service user {who} runs without supplementary groups (su-exec/gosu user:group, or a uid without a passwd entry), so group membership cannot give it the device"),
            "let pct-passthrough give access by owner at the next start (devN uid=/gid=, automatic), or start it with 'gosu <user>' without ':group'",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::RuntimeUser;

    #[test]
    fn render_counts_and_exit_code() {
        let (out, code) = render(&[Check::ok("host", "a"), Check::fail("105", "b", "do c")]);
        assert_eq!(
            out,
            "ok    host: a\nfail  105: b\n      fix: do c\n1 ok, 0 warn, 1 fail\n"
        );
        assert_eq!(code, 1);
        assert_eq!(render(&[Check::warn("host", "w", "f")]).1, 0);
    }

    #[test]
    fn subid_shape_checks() {
        assert_eq!(
            subid_shape("/etc/subgid", None, &[])[0].verdict,
            Verdict::Fail
        );
        let c = subid_shape("/etc/subgid", Some("root:100000:65536"), &[]);
        assert_eq!(c[0].verdict, Verdict::Fail);
        assert_eq!(c[0].fix.as_deref(), Some("echo >> /etc/subgid"));
        let c = subid_shape("/etc/subuid", Some("x\nroot:1:1\n"), &[1]);
        assert_eq!(c[0].verdict, Verdict::Warn);
        assert!(c[0].message.contains("line 1 is not"));
        assert_eq!(
            subid_shape("/etc/subuid", Some(""), &[])[0].verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn unstable_names() {
        for p in ["/dev/ttyUSB0", "/dev/ttyACM12", "/dev/hidraw3"] {
            assert!(unstable_name(p), "{p}");
        }
        for p in [
            "/dev/ttyUSB",
            "/dev/serial/by-id/usb-x",
            "/dev/ttyS0",
            "/dev/dri/renderD128",
        ] {
            assert!(!unstable_name(p), "{p}");
        }
    }

    #[test]
    fn udev_rule_from_usb_attributes() {
        let u = UsbAttrs {
            vendor: "10c4".into(),
            product: "ea60".into(),
            serial: Some("7a1f".into()),
        };
        assert_eq!(
            udev_rule("/dev/ttyUSB0", Some(&u)),
            "SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"10c4\", ATTRS{idProduct}==\"ea60\", ATTRS{serial}==\"7a1f\", SYMLINK+=\"serial/ttyUSB0-stable\""
        );
        assert!(udev_rule("/dev/ttyACM0", None).contains("udevadm info -a -n /dev/ttyACM0"));
    }

    #[test]
    fn render_group_collision() {
        let mut s = State::new(120);
        assert!(render_group("120", "/dev/dri/renderD128", 104, Some(&s)).is_none());
        s.container_groups.insert("_ssh".into(), 104);
        s.container_groups.insert("render".into(), 107);
        let c = render_group("120", "/dev/dri/renderD128", 104, Some(&s)).unwrap();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.message.contains("the group '_ssh' there"));
        assert_eq!(
            c.fix.as_deref(),
            Some("give the node the container's render GID: set gid=107 on its devN entry")
        );
        let c = render_group("120", "/dev/dri/renderD128", 107, Some(&s)).unwrap();
        assert_eq!(c.verdict, Verdict::Ok);
    }

    #[test]
    fn recorded_collisions() {
        let mut s = State::new(120);
        assert!(group_collisions("120", Some(&s)).is_empty());
        s.group_collisions
            .push(crate::model::state::GroupCollision {
                gid: 104,
                host_name: "render".into(),
                container_name: "_ssh".into(),
            });
        s.container_groups.insert("render".into(), 107);
        let c = &group_collisions("120", Some(&s))[0];
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c
            .message
            .starts_with("host group render (GID 104) is the group '_ssh' inside"));
        assert_eq!(
            c.fix.as_deref(),
            Some("give the device the container's own render GID: set gid=107 on its devN entry")
        );
    }

    #[test]
    fn dropped_groups() {
        let mut s = State::new(105);
        assert_eq!(runtime_user("105", Some(&s)).verdict, Verdict::Ok);
        s.runtime_user = Some(RuntimeUser {
            uid: 1000,
            name: Some("node".into()),
            keeps_supplementary_groups: false,
            ..RuntimeUser::default()
        });
        let c = runtime_user("105", Some(&s));
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c
            .message
            .starts_with("service user node (uid 1000) runs without supplementary groups"));
    }
}
