//! First boot: when pre-start already knows the service user (a user an
//! earlier boot recorded, or `lxc.init.uid`), an `lxc.hook.mount` line in the
//! generated LXC config runs this binary before the container's init, to
//! apply the Group rules to the rootfs. Pure: what to ask for, the line, and
//! parsing the hook's arguments.

use crate::model::group::valid_name;
use crate::model::prestart::is_serial_path;
use crate::model::pveconf::PveConfig;
use crate::model::state::State;

/// The subcommand LXC runs: `pct-passthrough lxc-mount-hook --uid N --group GID:NAME ...`.
pub const SUBCOMMAND: &str = "lxc-mount-hook";
/// The key in the generated LXC config.
pub const KEY: &str = "lxc.hook.mount";

/// What the mount hook should ensure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookPlan {
    /// Container UID of the service user; the hook finds its name.
    pub uid: u32,
    /// Groups to ensure (GID inside, name to create it under).
    pub groups: Vec<(u32, String)>,
    /// Where the user came from, for the log.
    pub source: String,
}

/// The group a device node needs inside, by its path, when the config says.
fn device_groups(conf: &PveConfig) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = Vec::new();
    let mut push = |gid: u32, name: &str| {
        if gid != 0 && !out.iter().any(|(g, _)| *g == gid) {
            out.push((gid, name.to_string()));
        }
    };
    for m in conf.mount_entries() {
        if m.is_bind() && is_serial_path(&m.source) {
            push(20, "dialout");
        }
    }
    for d in conf.dev_entries().into_iter().filter(|d| d.uid.is_none()) {
        // A node owned by the service needs no group.
        let gid = d.gid;
        let name = if is_serial_path(&d.path) {
            "dialout"
        } else if d.path.starts_with("/dev/dri/render") {
            "render"
        } else if d.path.starts_with("/dev/dri/") {
            "video"
        } else {
            "pctdev"
        };
        match gid {
            Some(20) => push(20, "dialout"),
            Some(g) if name == "pctdev" => push(g, &format!("pctdev{g}")),
            Some(g) => push(g, name),
            None => {}
        }
    }
    out
}

/// The plan, if the user is known and a device needs a group. A recorded
/// user counts once post-start had to fix the groups after the service
/// started (`State::first_boot_groups`; a rootfs that already had them gets
/// no hook); root and a user whose entrypoint drops supplementary groups
/// gain nothing from membership. Without a recorded user, a numeric
/// `lxc.init.uid` is used.
pub fn plan(conf: &PveConfig, state: Option<&State>) -> Option<HookPlan> {
    let groups = device_groups(conf);
    if groups.is_empty() {
        return None;
    }
    let recorded = state.and_then(|s| s.runtime_user.as_ref().map(|u| (u, s.first_boot_groups)));
    let (uid, source) = match recorded {
        Some((u, true)) if u.uid != 0 && u.keeps_supplementary_groups => (
            u.uid,
            format!("runtime user uid {} recorded by post-start", u.uid),
        ),
        Some(_) => return None,
        // Init gets only `lxc.init.groups`: membership helps processes it
        // starts through `su`, not init itself.
        None => {
            let s = crate::model::prestart::devices::init_service(conf)?;
            (s.uid, s.source)
        }
    };
    Some(HookPlan {
        uid,
        groups,
        source,
    })
}

/// True for a path LXC can run through `sh -c` without quoting.
fn shell_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+'))
}

/// The value of the `lxc.hook.mount` line. LXC runs it through `sh -c`, so
/// every part is checked to need no quoting.
pub fn hook_value(exe: &str, plan: &HookPlan) -> Result<String, String> {
    if !exe.starts_with('/') || !shell_safe(exe) {
        return Err(format!(
            "the binary's path {exe:?} has characters LXC's hook runner would interpret"
        ));
    }
    let mut v = format!("{exe} {SUBCOMMAND} --uid {}", plan.uid);
    for (gid, name) in &plan.groups {
        if !valid_name(name) {
            return Err(format!("group name {name:?} is not valid"));
        }
        v.push_str(&format!(" --group {gid}:{name}"));
    }
    Ok(v)
}

/// The hook's arguments: `--uid N`, `--group GID:NAME` (repeatable), then
/// what LXC appends (`<name> lxc mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookArgs {
    pub uid: u32,
    pub groups: Vec<(u32, String)>,
    /// The container name LXC passed, if any.
    pub name: Option<String>,
}

pub fn parse_args(args: &[String]) -> Result<HookArgs, String> {
    let mut uid = None;
    let mut groups = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--uid" => {
                let v = it.next().ok_or("--uid needs a value")?;
                uid = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("--uid {v:?}: not a UID"))?,
                );
            }
            "--group" => {
                let v = it.next().ok_or("--group needs GID:NAME")?;
                let (g, n) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--group {v:?}: expected GID:NAME"))?;
                let g: u32 = g.parse().map_err(|_| format!("--group {v:?}: bad GID"))?;
                if !valid_name(n) {
                    return Err(format!("--group {v:?}: bad name"));
                }
                groups.push((g, n.to_string()));
            }
            other => rest.push(other.to_string()),
        }
    }
    Ok(HookArgs {
        uid: uid.ok_or("--uid is required")?,
        groups,
        name: rest.into_iter().next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::RuntimeUser;

    const SERIAL: &str = "unprivileged: 1\nlxc.mount.entry: /dev/serial/by-id/x dev/ttyUSB0 none bind,optional,create=file\n";

    fn state(uid: u32, keeps: bool) -> State {
        let mut s = State::new(105);
        s.first_boot_groups = true;
        s.runtime_user = Some(RuntimeUser {
            uid,
            gid: uid,
            keeps_supplementary_groups: keeps,
            ..RuntimeUser::default()
        });
        s
    }

    #[test]
    fn recorded_user_and_serial_bind() {
        let p = plan(&PveConfig::parse(SERIAL), Some(&state(1000, true))).unwrap();
        assert_eq!(p.uid, 1000);
        assert_eq!(p.groups, vec![(20, "dialout".to_string())]);
        let v = hook_value("/var/lib/vz/snippets/pct-passthrough", &p).unwrap();
        assert_eq!(
            v,
            "/var/lib/vz/snippets/pct-passthrough lxc-mount-hook --uid 1000 --group 20:dialout"
        );
        let args: Vec<String> = v
            .split(' ')
            .skip(2)
            .chain(["105", "lxc", "mount"])
            .map(str::to_string)
            .collect();
        let a = parse_args(&args).unwrap();
        assert_eq!(
            (a.uid, a.groups, a.name.as_deref()),
            (1000, p.groups, Some("105"))
        );
    }

    #[test]
    fn init_uid_render_node_and_skips() {
        let conf = "lxc.init.uid: 1001\ndev0: /dev/dri/renderD128,gid=993\ndev1: /dev/ttyACM0,gid=20\ndev2: /dev/x,gid=7\n";
        let p = plan(&PveConfig::parse(conf), None).unwrap();
        assert_eq!(p.uid, 1001);
        assert_eq!(
            p.groups,
            vec![
                (993, "render".into()),
                (20, "dialout".into()),
                (7, "pctdev7".into())
            ]
        );
        // A recorded user who drops groups, or root: membership cannot help.
        assert!(plan(&PveConfig::parse(conf), Some(&state(1000, false))).is_none());
        assert!(plan(&PveConfig::parse(conf), Some(&state(0, true))).is_none());
        // The groups were already right when post-start looked: no hook.
        let mut fine = state(1000, true);
        fine.first_boot_groups = false;
        assert!(plan(&PveConfig::parse(SERIAL), Some(&fine)).is_none());
        // Nothing known, or nothing needed.
        assert!(plan(&PveConfig::parse(SERIAL), None).is_none());
        assert!(plan(&PveConfig::parse("lxc.init.uid: 5\n"), None).is_none());
        assert!(plan(
            &PveConfig::parse("lxc.init.uid: 0\ndev0: /dev/x,gid=7\n"),
            None
        )
        .is_none());
    }

    #[test]
    fn unsafe_paths_and_args_are_refused() {
        let p = plan(&PveConfig::parse(SERIAL), Some(&state(1000, true))).unwrap();
        for exe in ["/a b/x", "/x;rm", "rel/x", "/x$(id)", "/x (deleted)"] {
            assert!(hook_value(exe, &p).is_err(), "{exe}");
        }
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(parse_args(&s(&["--group", "20:dialout"])).is_err());
        assert!(parse_args(&s(&["--uid", "x"])).is_err());
        assert!(parse_args(&s(&["--uid", "1", "--group", "20:a;b"])).is_err());
        assert!(parse_args(&s(&["--uid", "1", "--group", "20"])).is_err());
    }
}
