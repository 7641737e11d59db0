//! The command line of DESIGN.md: argv in, a [`Command`] out. Pure.

use std::ffi::OsString;
use std::fmt;

use crate::paths::Vmid;
use crate::phase::Phase;

pub const USAGE: &str = "\
usage:
  pct-passthrough <vmid> <phase>                      how Proxmox calls it (hookscript)
  pct-passthrough --phase <phase> <vmid> [--dry-run]  run a phase by hand
  pct-passthrough plan <vmid>                         what pre-start would change, as a diff
  pct-passthrough status <vmid> [--json]              map, coverage, devices, runtime user
  pct-passthrough doctor [<vmid>]                     host and container checks, each with a fix
  pct-passthrough udev <add|remove> <devnode>         run by the package's udev rule (replug)
  pct-passthrough --help | --version

phases: pre-start, post-start, pre-stop, post-stop
vmid: a Proxmox guest ID, 100 to 999999999

environment:
  PCT_PASSTHROUGH_ROOT  prefix for every host path (default /); /proc and /sys are never prefixed

locks: --phase pre-start and post-start take Proxmox's config lock
(/run/lock/lxc/pve-config-<vmid>.lock, waiting up to 10 s) as Proxmox holds it
around them; pre-stop and post-stop do not, as they never edit the config.
Hookscript mode and --dry-run take no config lock.

exit codes: 0 ok; 1 refused or failed; 2 usage error. An unknown phase in
hookscript mode is logged and exits 0. Only pre-start can block a start.";

/// A phase as given in hookscript mode: Proxmox may add phases we do not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseArg {
    Known(Phase),
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `<vmid> <phase>`, as Proxmox runs a hookscript.
    Hook {
        vmid: Vmid,
        phase: PhaseArg,
    },
    /// `--phase <phase> <vmid> [--dry-run]`.
    Manual {
        vmid: Vmid,
        phase: Phase,
        dry_run: bool,
    },
    Plan {
        vmid: Vmid,
    },
    Status {
        vmid: Vmid,
        json: bool,
    },
    Doctor {
        vmid: Option<Vmid>,
    },
    /// `udev <action> <devnode>`: the package's udev rule, on a tty or DRM
    /// node's add or remove (other actions do nothing).
    Udev {
        action: String,
        devnode: String,
    },
    /// `lxc-mount-hook ...`: run by LXC from an `lxc.hook.mount` line that
    /// pre-start put in the generated config (first-boot group setup).
    LxcMountHook {
        args: Vec<String>,
    },
    /// `lxc-shift-hook ...`: run by LXC from an `lxc.hook.pre-start` line
    /// pre-start put in the generated config (re-own files for a new map).
    LxcShiftHook {
        args: Vec<String>,
    },
    Help,
    Version,
}

/// A usage error: one line saying what was expected. Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

fn parse_vmid(s: &str) -> Result<Vmid, UsageError> {
    Vmid::parse(s).ok_or_else(|| {
        usage(format!(
            "invalid vmid '{s}': expected a number from {} to {} without a leading zero",
            Vmid::MIN,
            Vmid::MAX
        ))
    })
}

fn parse_phase(s: &str) -> Result<Phase, UsageError> {
    Phase::parse(s).ok_or_else(|| {
        usage(format!(
            "unknown phase '{s}': expected pre-start, post-start, pre-stop or post-stop"
        ))
    })
}

/// Parses argv without the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    use lexopt::prelude::*;
    let args: Vec<OsString> = args.into_iter().collect();
    if args
        .first()
        .is_some_and(|a| a == crate::model::firstboot::SUBCOMMAND)
    {
        // LXC's own argv: parsed by the hook, which never fails a start.
        return Ok(Command::LxcMountHook {
            args: args[1..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        });
    }
    if args
        .first()
        .is_some_and(|a| a == crate::model::prestart::shift::SUBCOMMAND)
    {
        return Ok(Command::LxcShiftHook {
            args: args[1..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        });
    }
    let mut p = lexopt::Parser::from_args(args);
    let mut positionals: Vec<String> = Vec::new();
    let mut phase_opt: Option<String> = None;
    let mut dry_run = false;
    let mut json = false;
    while let Some(arg) = p.next().map_err(|e| usage(e.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("phase") => {
                let v = p.value().map_err(|e| usage(e.to_string()))?;
                phase_opt = Some(v.string().map_err(|e| usage(e.to_string()))?);
            }
            Long("dry-run") => dry_run = true,
            Long("json") => json = true,
            Value(v) => positionals.push(v.string().map_err(|e| usage(e.to_string()))?),
            other => return Err(usage(other.unexpected().to_string())),
        }
    }
    let pos: Vec<&str> = positionals.iter().map(String::as_str).collect();

    if let Some(phase) = phase_opt {
        if json {
            return Err(usage("--json belongs to status"));
        }
        let phase = parse_phase(&phase)?;
        return match pos.as_slice() {
            [vmid] => Ok(Command::Manual {
                vmid: parse_vmid(vmid)?,
                phase,
                dry_run,
            }),
            [] => Err(usage(
                "missing <vmid>: pct-passthrough --phase <phase> <vmid> [--dry-run]",
            )),
            _ => Err(usage(
                "too many arguments: pct-passthrough --phase <phase> <vmid> [--dry-run]",
            )),
        };
    }
    if dry_run {
        return Err(usage(
            "--dry-run needs --phase: pct-passthrough --phase <phase> <vmid> --dry-run",
        ));
    }
    let no_json = |cmd: Command| {
        if json {
            Err(usage("--json belongs to status"))
        } else {
            Ok(cmd)
        }
    };
    match pos.as_slice() {
        [] => Err(usage(
            "missing arguments: pct-passthrough <vmid> <phase> (see --help)",
        )),
        ["plan", vmid] => no_json(Command::Plan {
            vmid: parse_vmid(vmid)?,
        }),
        ["plan"] => Err(usage("missing <vmid>: pct-passthrough plan <vmid>")),
        ["status", vmid] => Ok(Command::Status {
            vmid: parse_vmid(vmid)?,
            json,
        }),
        ["status"] => Err(usage(
            "missing <vmid>: pct-passthrough status <vmid> [--json]",
        )),
        ["doctor"] => no_json(Command::Doctor { vmid: None }),
        ["udev", action, devnode] => {
            if !devnode.starts_with("/dev/") {
                return Err(usage(format!(
                    "udev: '{devnode}' is not a node under /dev/: pct-passthrough udev <add|remove> <devnode>"
                )));
            }
            no_json(Command::Udev {
                action: action.to_string(),
                devnode: devnode.to_string(),
            })
        }
        ["udev", ..] => Err(usage(
            "udev takes an action and a node: pct-passthrough udev <add|remove> <devnode>",
        )),
        ["doctor", vmid] => no_json(Command::Doctor {
            vmid: Some(parse_vmid(vmid)?),
        }),
        [vmid, phase] => {
            let vmid = parse_vmid(vmid)?;
            let phase = match Phase::parse(phase) {
                Some(p) => PhaseArg::Known(p),
                None => PhaseArg::Unknown(phase.to_string()),
            };
            no_json(Command::Hook { vmid, phase })
        }
        [vmid] => {
            parse_vmid(vmid)?;
            Err(usage("missing <phase>: pct-passthrough <vmid> <phase>"))
        }
        _ => Err(usage("too many arguments (see --help)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn lxc_mount_hook_takes_lxcs_argv_verbatim() {
        assert_eq!(
            p(&[
                "lxc-mount-hook",
                "--uid",
                "1000",
                "--group",
                "20:dialout",
                "105",
                "lxc",
                "mount"
            ]),
            Ok(Command::LxcMountHook {
                args: [
                    "--uid",
                    "1000",
                    "--group",
                    "20:dialout",
                    "105",
                    "lxc",
                    "mount"
                ]
                .map(String::from)
                .to_vec()
            })
        );
        // Only as the first word.
        assert!(
            p(&["105", "lxc-mount-hook"]).is_ok_and(|c| !matches!(c, Command::LxcMountHook { .. }))
        );
    }

    #[test]
    fn hook_mode() {
        assert_eq!(
            p(&["105", "pre-start"]),
            Ok(Command::Hook {
                vmid: Vmid::new(105).unwrap(),
                phase: PhaseArg::Known(Phase::PreStart)
            })
        );
        assert_eq!(
            p(&["105", "pre-migrate"]),
            Ok(Command::Hook {
                vmid: Vmid::new(105).unwrap(),
                phase: PhaseArg::Unknown("pre-migrate".into())
            })
        );
    }

    #[test]
    fn manual_mode() {
        assert_eq!(
            p(&["--phase", "post-stop", "105", "--dry-run"]),
            Ok(Command::Manual {
                vmid: Vmid::new(105).unwrap(),
                phase: Phase::PostStop,
                dry_run: true
            })
        );
        assert_eq!(
            p(&["--phase=pre-start", "105"]),
            Ok(Command::Manual {
                vmid: Vmid::new(105).unwrap(),
                phase: Phase::PreStart,
                dry_run: false
            })
        );
    }

    #[rstest]
    #[case(&[], "missing arguments")]
    #[case(&["105"], "missing <phase>")]
    #[case(&["99", "pre-start"], "invalid vmid '99'")]
    #[case(&["1000000000", "pre-start"], "invalid vmid")]
    #[case(&["abc", "pre-start"], "invalid vmid")]
    #[case(&["--phase", "prestart", "105"], "unknown phase 'prestart'")]
    #[case(&["--phase", "pre-start"], "missing <vmid>")]
    #[case(&["105", "pre-start", "x"], "too many")]
    #[case(&["105", "pre-start", "--dry-run"], "--dry-run needs --phase")]
    #[case(&["--bogus"], "invalid option '--bogus'")]
    #[case(&["plan"], "missing <vmid>")]
    fn usage_errors(#[case] args: &[&str], #[case] expect: &str) {
        let e = p(args).unwrap_err();
        assert!(e.0.contains(expect), "{e} does not contain {expect}");
        assert!(!e.0.contains('\n'));
    }

    #[test]
    fn subcommands() {
        let v = Vmid::new(105).unwrap();
        assert_eq!(p(&["plan", "105"]), Ok(Command::Plan { vmid: v }));
        assert_eq!(
            p(&["status", "105", "--json"]),
            Ok(Command::Status {
                vmid: v,
                json: true
            })
        );
        assert_eq!(p(&["doctor"]), Ok(Command::Doctor { vmid: None }));
        assert_eq!(
            p(&["udev", "add", "/dev/ttyUSB1"]),
            Ok(Command::Udev {
                action: "add".into(),
                devnode: "/dev/ttyUSB1".into()
            })
        );
        assert!(p(&["udev", "add", "ttyUSB1"]).is_err());
        assert!(p(&["udev", "add"]).is_err());
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["-V"]), Ok(Command::Version));
    }
}
