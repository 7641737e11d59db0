//! Defensive decoding of text files read from disk: size, UTF-8, NUL and
//! line-length checks, with errors that name the file and the line.

use std::fmt;

/// Why a byte buffer is not acceptable text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// `size` is the file's real size (from fstat, or the whole buffer);
    /// `None` when only a capped read saw it pass `max` (a growing file).
    TooLarge {
        size: Option<u64>,
        max: usize,
    },
    NotUtf8 {
        line: usize,
    },
    Nul {
        line: usize,
    },
    LineTooLong {
        line: usize,
        max: usize,
    },
}

/// A [`TextError`] with the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTextError {
    pub file: String,
    pub error: TextError,
}

impl fmt::Display for FileTextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = &self.file;
        match self.error {
            TextError::TooLarge {
                size: Some(size),
                max,
            } => write!(
                f,
                "{file}: {size} bytes is larger than the {max} bytes allowed; this is not a file the tool expects here, check its contents"
            ),
            TextError::TooLarge { size: None, max } => write!(
                f,
                "{file}: larger than the {max} bytes allowed (it grew while being read); this is not a file the tool expects here, check its contents"
            ),
            TextError::NotUtf8 { line } => write!(
                f,
                "{file} line {line}: not valid UTF-8 (binary data?); fix or remove that line"
            ),
            TextError::Nul { line } => write!(
                f,
                "{file} line {line}: contains a NUL byte (binary data?); fix or remove that line"
            ),
            TextError::LineTooLong { line, max } => write!(
                f,
                "{file} line {line}: longer than {max} bytes; fix or remove that line"
            ),
        }
    }
}

impl std::error::Error for FileTextError {}

/// Size limits for one kind of file.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_line: usize,
}

impl Limits {
    /// pmxcfs refuses files over 1 MiB, so a larger container config is not real.
    pub const PVE_CONFIG: Limits = Limits {
        max_bytes: 1 << 20,
        max_line: 64 << 10,
    };
    /// Subordinate-ID files, the generated LXC config, state and policy.
    pub const HOST_FILE: Limits = Limits {
        max_bytes: 16 << 20,
        max_line: 64 << 10,
    };
    /// Files read from inside a container: untrusted.
    pub const CONTAINER_FILE: Limits = Limits {
        max_bytes: 16 << 20,
        max_line: 64 << 10,
    };
}

/// Checks only the size of `bytes`: for files kept as bytes, whose lines
/// are judged one by one when they are needed (the container config).
pub fn check_size(file: &str, bytes: &[u8], limits: Limits) -> Result<(), FileTextError> {
    if bytes.len() > limits.max_bytes {
        return Err(FileTextError {
            file: file.to_string(),
            error: TextError::TooLarge {
                size: Some(bytes.len() as u64),
                max: limits.max_bytes,
            },
        });
    }
    Ok(())
}

/// Checks `bytes` against `limits` and returns it as `&str`.
pub fn decode<'a>(file: &str, bytes: &'a [u8], limits: Limits) -> Result<&'a str, FileTextError> {
    let err = |error| FileTextError {
        file: file.to_string(),
        error,
    };
    if bytes.len() > limits.max_bytes {
        return Err(err(TextError::TooLarge {
            size: Some(bytes.len() as u64),
            max: limits.max_bytes,
        }));
    }
    let line_of = |pos: usize| bytes[..pos].iter().filter(|&&b| b == b'\n').count() + 1;
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return Err(err(TextError::NotUtf8 {
                line: line_of(e.valid_up_to()),
            }))
        }
    };
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(err(TextError::Nul { line: line_of(pos) }));
    }
    for (n, line) in text.split('\n').enumerate() {
        if line.len() > limits.max_line {
            return Err(err(TextError::LineTooLong {
                line: n + 1,
                max: limits.max_line,
            }));
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        max_bytes: 100,
        max_line: 10,
    };

    #[test]
    fn accepts_plain_text() {
        assert_eq!(decode("f", b"a\nb", SMALL).unwrap(), "a\nb");
    }

    #[test]
    fn names_the_line_of_bad_utf8() {
        let e = decode("/etc/x", b"ok\nok\n\xff\xfe\n", SMALL).unwrap_err();
        assert_eq!(e.error, TextError::NotUtf8 { line: 3 });
        assert!(e.to_string().starts_with("/etc/x line 3: not valid UTF-8"));
    }

    #[test]
    fn refuses_nul_long_lines_and_big_files() {
        assert_eq!(
            decode("f", b"a\n\0", SMALL).unwrap_err().error,
            TextError::Nul { line: 2 }
        );
        assert_eq!(
            decode("f", b"a\n0123456789A\n", SMALL).unwrap_err().error,
            TextError::LineTooLong { line: 2, max: 10 }
        );
        assert_eq!(
            decode("f", &[b'a'; 101], SMALL).unwrap_err().error,
            TextError::TooLarge {
                size: Some(101),
                max: 100
            }
        );
    }

    #[test]
    fn too_large_states_the_size_it_knows() {
        let e = |size| {
            FileTextError {
                file: "/etc/pve/lxc/105.conf".into(),
                error: TextError::TooLarge { size, max: 1 << 20 },
            }
            .to_string()
        };
        assert!(
            e(Some(2_029_143)).starts_with(
                "/etc/pve/lxc/105.conf: 2029143 bytes is larger than the 1048576 bytes allowed;"
            ),
            "{}",
            e(Some(2_029_143))
        );
        let unknown = e(None);
        assert!(
            unknown.starts_with("/etc/pve/lxc/105.conf: larger than the 1048576 bytes allowed"),
            "{unknown}"
        );
        assert!(!unknown.contains("1048577"), "{unknown}");
    }

    #[test]
    fn check_size_judges_only_the_size() {
        assert!(check_size("f", b"caf\xe9\n\0", SMALL).is_ok());
        assert!(check_size("f", &[b'x'; 100], SMALL).is_ok());
        assert_eq!(
            check_size("f", &[b'x'; 101], SMALL).unwrap_err().error,
            TextError::TooLarge {
                size: Some(101),
                max: 100
            }
        );
    }
}
