//! `status`'s report: the effective map and the lines the tool owns,
//! subordinate-ID coverage, devices with their verdicts, the runtime user and
//! the last run, as text or as one JSON object. Pure.

use std::fmt::Write as _;

use serde::Serialize;

use crate::model::escape::escape;
use crate::model::idmap::{self, IdKind, IdmapEntry};
use crate::model::pveconf::PveConfig;
use crate::model::state::{HotplugRecord, LastRun, State};
use crate::model::subid::SubidFile;
use crate::model::tasklog;

/// The JSON object of `status --json`. `vmid`, `idmap` and `runtime_user`
/// are the contract of DESIGN.md; the rest is documented in the README.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub vmid: u32,
    pub unprivileged: bool,
    /// `false` when the policy says `enabled = false`.
    pub enabled: bool,
    pub hookscript: Option<String>,
    /// The effective map, like `"g 20 20 1"`; empty for a privileged container.
    pub idmap: Vec<String>,
    /// `config` (its `lxc.idmap` lines), `default` (PVE's), or `none` (privileged).
    pub idmap_source: &'static str,
    /// Lines of the container config the tool wrote, as `key: value`.
    pub owned: Vec<String>,
    /// Per host range of the map: is it in root's subordinate IDs?
    pub subid: Vec<Coverage>,
    pub devices: Vec<DeviceStatus>,
    /// IDs inside the container, or null before the first detection.
    pub runtime_user: Option<RuntimeUserStatus>,
    pub last_run: Option<LastRun>,
    /// Why the policy or the state was ignored, if one was.
    pub problem: Option<String>,
    /// What pre-start would do now: its planner's own decision.
    pub next_start: NextStart,
    /// Whether the container's files are owned under its map.
    pub files: FilesStatus,
}

/// The container's files and its map (see the README's "Files follow the
/// map").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FilesStatus {
    /// The map the files are owned under, if recorded.
    pub idmap: Option<Vec<String>>,
    /// Map changes recorded but not yet applied to the files.
    pub pending: usize,
    /// What the last shift re-owned, and when.
    pub last_shift: Option<String>,
    pub last_shift_at: Option<u64>,
}

/// The pre-start planner's decision, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextStart {
    /// `nothing` (pre-start returns at once), `disabled`, `unchanged`
    /// (nothing to write), `changes` (files it would write), `refused`.
    pub outcome: &'static str,
    /// The refusal, or the files it would change.
    pub message: String,
    /// How to fix a refusal.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// `uid` or `gid`.
    pub kind: &'static str,
    /// Host range, like `20` or `100000-165535`.
    pub range: String,
    pub covered: bool,
    /// The parts root lacks, as `root:start:count` lines.
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceStatus {
    /// `dev0`, `lxc.mount.entry`, or `policy`.
    pub source: String,
    pub path: String,
    /// The host node it resolves to; null when missing.
    pub node: Option<String>,
    /// post-start's verdict (`ok`, `needs-restart`, `no-access`, `missing`),
    /// or `unknown` before the first start with the hook.
    pub verdict: String,
    pub detail: String,
    /// The last udev event hotplug handled for this device, or null.
    pub hotplug: Option<HotplugRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeUserStatus {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: Option<String>,
    /// Seconds since the epoch.
    pub detected_at: u64,
    pub keeps_supplementary_groups: bool,
}

/// What `status` read.
#[derive(Debug, Clone)]
pub struct StatusFacts<'a> {
    pub vmid: u32,
    pub conf: &'a PveConfig,
    pub enabled: bool,
    pub state: Option<&'a State>,
    pub problem: Option<String>,
    pub subuid: Option<&'a str>,
    pub subgid: Option<&'a str>,
    /// Devices with the host node each resolved to.
    pub devices: Vec<(String, String, Option<String>)>,
    pub next_start: NextStart,
}

/// Builds the report.
pub fn build(f: &StatusFacts) -> Status {
    let unprivileged = f.conf.unprivileged();
    let lines: Vec<&str> = f.conf.idmap_lines();
    let (entries, source): (Vec<IdmapEntry>, &'static str) = if !unprivileged && lines.is_empty() {
        (Vec::new(), "none")
    } else if lines.is_empty() {
        (idmap::pve_default(), "default")
    } else {
        (
            lines
                .iter()
                .filter_map(|l| IdmapEntry::parse(l).ok())
                .collect(),
            "config",
        )
    };
    let mut idmap: Vec<String> = entries.iter().map(ToString::to_string).collect();
    // Lines PVE would refuse stay visible, verbatim.
    if source == "config" {
        idmap = lines.iter().map(|l| normalize(l)).collect();
    }

    let mut subid = Vec::new();
    for kind in IdKind::ALL {
        let file = SubidFile::parse(match kind {
            IdKind::Uid => f.subuid.unwrap_or(""),
            IdKind::Gid => f.subgid.unwrap_or(""),
        });
        for e in entries.iter().filter(|e| e.kind == kind) {
            let missing = file.missing(&[e.host_range()]);
            subid.push(Coverage {
                kind: kind.word(),
                range: e.host_range().to_string(),
                covered: missing.is_empty(),
                missing: missing
                    .iter()
                    .map(|r| format!("root:{}:{}", r.start, r.len()))
                    .collect(),
            });
        }
    }

    let state = f.state;
    let owned = state
        .map(|s| {
            s.owned
                .conf_lines
                .iter()
                .chain(&s.owned.dev_entries)
                .chain(&s.owned.dev_options)
                .map(ToString::to_string)
                .collect()
        })
        .unwrap_or_default();
    let devices = f
        .devices
        .iter()
        .map(|(source, path, node)| {
            let v = state.and_then(|s| s.devices.iter().find(|d| d.path == *path));
            DeviceStatus {
                source: source.clone(),
                path: path.clone(),
                node: node.clone(),
                verdict: match (v, node) {
                    (Some(v), _) => v.verdict.to_string(),
                    (None, None) => "missing".into(),
                    (None, Some(_)) => "unknown".into(),
                },
                detail: v.map(|v| v.detail.clone()).unwrap_or_default(),
                hotplug: state
                    .and_then(|s| s.hotplug.iter().rev().find(|r| r.path == *path))
                    .cloned(),
            }
        })
        .collect();
    Status {
        vmid: f.vmid,
        unprivileged,
        enabled: f.enabled,
        hookscript: f.conf.hookscript().map(str::to_string),
        idmap,
        idmap_source: source,
        owned,
        subid,
        devices,
        runtime_user: state
            .and_then(|s| s.runtime_user.as_ref())
            .map(|u| RuntimeUserStatus {
                uid: u.uid,
                gid: u.gid,
                groups: u.groups.clone(),
                name: u.name.clone(),
                detected_at: u.detected_at,
                keeps_supplementary_groups: u.keeps_supplementary_groups,
            }),
        last_run: state.and_then(|s| s.last_run.clone()),
        problem: f.problem.clone(),
        next_start: f.next_start.clone(),
        files: FilesStatus {
            idmap: state.and_then(|s| s.files_idmap.clone()),
            pending: state.map_or(0, |s| s.shift.steps.len()),
            last_shift: state.and_then(|s| s.last_shift.as_ref().map(|r| r.summary.clone())),
            last_shift_at: state.and_then(|s| s.last_shift.as_ref().map(|r| r.at)),
        },
    }
}

/// Each line of `text` escaped (it may quote container text), line
/// breaks kept as the parts of a task-log message.
fn escape_parts(text: &str) -> String {
    text.split('\n')
        .map(|p| escape(p).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `g  20 20 1` as `g 20 20 1`.
fn normalize(line: &str) -> String {
    line.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (civil calendar,
/// Howard Hinnant's days-to-date).
pub fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl Status {
    /// The human report.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let kind = if self.unprivileged {
            "unprivileged"
        } else {
            "privileged"
        };
        let _ = writeln!(
            o,
            "container {} ({kind}), hookscript {}{}",
            self.vmid,
            self.hookscript.as_deref().unwrap_or("none"),
            if self.enabled {
                ""
            } else {
                "; disabled by policy (enabled = false)"
            }
        );
        if let Some(p) = &self.problem {
            let _ = writeln!(o, "problem: {p}");
        }
        match self.idmap_source {
            "none" => {
                let _ = writeln!(
                    o,
                    "id map: none (privileged: no map, devices and groups only)"
                );
            }
            src => {
                let from = if src == "default" {
                    "PVE's default"
                } else {
                    "from the container config"
                };
                let _ = writeln!(o, "id map ({from}):");
                for l in &self.idmap {
                    let mark = if self.owned.iter().any(|w| {
                        w.strip_prefix("lxc.idmap:")
                            .is_some_and(|v| normalize(v) == *l)
                    }) {
                        "   (pct-passthrough)"
                    } else {
                        ""
                    };
                    let _ = writeln!(o, "  {l}{mark}");
                }
            }
        }
        let other_owned: Vec<&String> = self
            .owned
            .iter()
            .filter(|w| !w.starts_with("lxc.idmap:"))
            .collect();
        if !other_owned.is_empty() {
            let _ = writeln!(o, "other lines pct-passthrough wrote:");
            for w in other_owned {
                let _ = writeln!(o, "  {w}");
            }
        }
        if !self.subid.is_empty() {
            let _ = writeln!(o, "subordinate IDs for root:");
            for c in &self.subid {
                if c.covered {
                    let _ = writeln!(o, "  {} {}: covered", c.kind, c.range);
                } else {
                    let _ = writeln!(
                        o,
                        "  {} {}: MISSING {} in /etc/sub{} (the next pre-start adds it)",
                        c.kind,
                        c.range,
                        c.missing.join(", "),
                        c.kind
                    );
                }
            }
        }
        if self.devices.is_empty() {
            let _ = writeln!(o, "devices: none");
        } else {
            let _ = writeln!(o, "devices:");
            for d in &self.devices {
                let node = match &d.node {
                    Some(n) if *n != d.path => format!(" -> {n}"),
                    Some(_) => String::new(),
                    None => " (not present)".into(),
                };
                let detail = if d.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.detail)
                };
                let verdict = match d.verdict.as_str() {
                    "unknown" => "not checked yet (post-start checks it)",
                    v => v,
                };
                let one = format!("  {} {}{node}: {verdict}", d.source, d.path);
                if one.chars().count() <= tasklog::WIDTH {
                    let _ = writeln!(o, "{one}");
                } else {
                    let _ = writeln!(o, "  {} {}", d.source, d.path);
                    let _ = writeln!(o, "     {node}: {verdict}");
                }
                let detail = detail.trim_start_matches(": ");
                if !detail.is_empty() {
                    for l in tasklog::wrap(&escape(detail), tasklog::WIDTH - 6, tasklog::WIDTH - 6)
                    {
                        let _ = writeln!(o, "      {l}");
                    }
                }
                if let Some(h) = &d.hotplug {
                    let text = format!(
                        "last hotplug: {} {}{} at {}, {} ({}): {}",
                        h.action,
                        h.node,
                        h.rule_id
                            .as_deref()
                            .map(|r| format!(" [{r}]"))
                            .unwrap_or_default(),
                        h.container_path,
                        h.outcome,
                        utc(h.at),
                        escape(&h.detail)
                    );
                    for l in tasklog::wrap(&text, tasklog::WIDTH - 4, tasklog::WIDTH - 6) {
                        let _ = writeln!(o, "    {l}");
                    }
                }
            }
        }
        match &self.runtime_user {
            Some(u) => {
                let name = u.name.as_deref().map_or("(no passwd entry)".into(), escape);
                let groups: Vec<String> = u.groups.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    o,
                    "runtime user: {name} uid {} gid {} groups [{}]{}, detected {}",
                    u.uid,
                    u.gid,
                    groups.join(","),
                    if u.keeps_supplementary_groups {
                        ""
                    } else {
                        " (dropped supplementary groups)"
                    },
                    utc(u.detected_at)
                );
            }
            None => {
                let _ = writeln!(o, "runtime user: not detected yet");
            }
        }
        let n = &self.next_start;
        let mut next = n.message.clone();
        if let Some(fix) = &n.fix {
            next.push_str(&format!("\nfix: {fix}"));
        }
        let head = if next.is_empty() {
            format!("next start: {}", n.outcome)
        } else {
            format!("next start: {}: ", n.outcome)
        };
        for l in tasklog::lines(&head, &escape_parts(&next)) {
            let _ = writeln!(o, "{l}");
        }
        if self.files.pending > 0 {
            let _ = writeln!(
                o,
                "files: {} map change(s) not yet applied to the container's files; the next start re-owns them before init",
                self.files.pending
            );
        }
        if let (Some(summary), Some(at)) = (&self.files.last_shift, self.files.last_shift_at) {
            let _ = writeln!(
                o,
                "files: re-owned at {} for a map change: {summary}",
                utc(at)
            );
        }
        match &self.last_run {
            Some(r) => {
                let head = format!("last run: {} {} at {}", r.phase, r.outcome, utc(r.at));
                let head = if r.message.is_empty() {
                    head
                } else {
                    format!("{head}: ")
                };
                for l in tasklog::lines(&head, &escape_parts(&r.message)) {
                    let _ = writeln!(o, "{l}");
                }
            }
            None => {
                let _ = writeln!(o, "last run: none recorded");
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::{DeviceVerdict, RuntimeUser};
    use rstest::rstest;

    #[test]
    fn pending_and_last_shifts_are_shown() {
        let conf = PveConfig::parse("unprivileged: 1\n");
        let mut st = State::new(105);
        st.shift.steps.push(crate::model::shift::ShiftStep::new(
            vec!["g 0 100000 65536".into()],
            vec!["g 0 100000 20".into()],
        ));
        st.last_shift = Some(crate::model::state::ShiftRecord {
            at: 1_700_000_000,
            summary: "gid 100020 -> 20: 2".into(),
            reported: true,
        });
        let s = build(&facts(&conf, Some(&st)));
        assert_eq!(s.files.pending, 1);
        let text = s.render();
        assert!(
            text.contains("files: 1 map change(s) not yet applied"),
            "{text}"
        );
        assert!(
            text.contains(
                "files: re-owned at 2023-11-14 22:13:20 UTC for a map change: gid 100020 -> 20: 2"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["files"]["pending"], 1);
    }

    #[rstest]
    #[case(0, "1970-01-01 00:00:00 UTC")]
    #[case(951_782_400, "2000-02-29 00:00:00 UTC")]
    #[case(1_700_000_000, "2023-11-14 22:13:20 UTC")]
    #[case(4_102_444_799, "2099-12-31 23:59:59 UTC")]
    fn utc_dates(#[case] secs: u64, #[case] want: &str) {
        assert_eq!(utc(secs), want);
    }

    fn facts<'a>(conf: &'a PveConfig, state: Option<&'a State>) -> StatusFacts<'a> {
        StatusFacts {
            vmid: 105,
            conf,
            enabled: true,
            state,
            problem: None,
            subuid: Some("root:100000:65536\n"),
            subgid: Some("root:100000:65536\n"),
            devices: vec![(
                "dev0".into(),
                "/dev/serial/by-id/usb-x".into(),
                Some("/dev/ttyUSB0".into()),
            )],
            next_start: NextStart {
                outcome: "unchanged",
                message: String::new(),
                fix: None,
            },
        }
    }

    #[test]
    fn default_map_privileged_and_custom() {
        let c = PveConfig::parse("unprivileged: 1\n");
        let s = build(&facts(&c, None));
        assert_eq!(s.idmap, ["u 0 100000 65536", "g 0 100000 65536"]);
        assert_eq!(s.idmap_source, "default");
        assert!(s.subid.iter().all(|c| c.covered));
        assert_eq!(s.devices[0].verdict, "unknown");
        assert!(s.render().contains(
            "  dev0 /dev/serial/by-id/usb-x -> /dev/ttyUSB0: not checked yet (post-start checks it)\n"
        ));

        let c = PveConfig::parse("arch: amd64\n");
        let s = build(&facts(&c, None));
        assert!(s.idmap.is_empty());
        assert!(s.render().contains("id map: none (privileged"));

        let c = PveConfig::parse(
            "unprivileged: 1\nlxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 20\nlxc.idmap = g  20 20 1\nlxc.idmap: g 21 100021 65515\n",
        );
        let mut st = State::new(105);
        st.owned
            .conf_lines
            .push(crate::model::state::OwnedLine::new(
                "lxc.idmap",
                "g 20 20 1",
            ));
        st.devices.push(DeviceVerdict {
            path: "/dev/serial/by-id/usb-x".into(),
            container_path: None,
            verdict: crate::model::state::Verdict::Ok,
            detail: "node (uid 1000) can open it".into(),
            inside: None,
        });
        st.runtime_user = Some(RuntimeUser {
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 20],
            name: Some("node".into()),
            keeps_supplementary_groups: true,
            detected_at: 1_700_000_000,
            ..RuntimeUser::default()
        });
        let s = build(&facts(&c, Some(&st)));
        assert_eq!(s.idmap[2], "g 20 20 1");
        let gid20 = s.subid.iter().find(|c| c.range == "20").unwrap();
        assert!(!gid20.covered);
        assert_eq!(gid20.missing, ["root:20:1"]);
        let text = s.render();
        assert!(text.contains("  g 20 20 1   (pct-passthrough)\n"), "{text}");
        assert!(
            text.contains("  gid 20: MISSING root:20:1 in /etc/subgid"),
            "{text}"
        );
        assert!(
            text.contains(
                "  dev0 /dev/serial/by-id/usb-x -> /dev/ttyUSB0: ok\n      node (uid 1000) can open it\n"
            ),
            "{text}"
        );
        assert!(text.contains("runtime user: node uid 1000 gid 1000 groups [1000,20], detected 2023-11-14 22:13:20 UTC\n"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["runtime_user"]["groups"],
            serde_json::json!([1000, 20])
        );
        assert_eq!(json["idmap"][2], "g 20 20 1");
    }
}
