//! What code an interpreter runs: a script file, or code that comes from no file (given on the
//! command line, read from standard input, a module by name).
//!
//! Read from the exec's arguments, by the interpreter's family (its file's name without a
//! version: `python3.11` is `python`; busybox by its applet). Each family's options that take a
//! value are skipped with their value, so that `python3 -W ignore x.py` runs `x.py` and
//! `sh -o errexit x.sh` runs `x.sh`.

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// The code an interpreter was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// A script file, as named on the command line: absolute once resolved against the
    /// process's working directory, relative when that is unknown.
    Script(PathBuf),
    /// Code from no file: `-c`/`-e` text, standard input, a module by name.
    Inline(Inline),
}

/// A script file's SHA-256, or why it could not be taken.
pub type ScriptDigest = Result<[u8; 32], String>;

/// Where inline code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inline {
    /// Given as an argument (`sh -c`, `python -c`, `perl -e`, an awk program).
    Argument,
    /// Read from standard input (a pipe, or a terminal).
    Stdin,
    /// A module by name (`python -m`).
    Module,
}

impl Inline {
    pub fn name(self) -> &'static str {
        match self {
            Inline::Argument => "argument",
            Inline::Stdin => "stdin",
            Inline::Module => "module",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Shell,
    Python,
    Perl,
    Lua,
    Node,
    Ruby,
    Awk,
    Php,
    Tcl,
}

/// The family of the interpreter named `name` (a file name, version stripped).
fn family(name: &[u8]) -> Option<Family> {
    let end = name
        .iter()
        .rposition(|c| !(c.is_ascii_digit() || *c == b'.'))
        .map_or(0, |i| i + 1);
    Some(match &name[..end] {
        b"sh" | b"ash" | b"dash" | b"bash" | b"rbash" | b"hush" | b"ksh" | b"mksh" | b"zsh" => {
            Family::Shell
        }
        b"python" | b"pypy" => Family::Python,
        b"perl" => Family::Perl,
        b"lua" | b"luajit" => Family::Lua,
        b"node" | b"nodejs" => Family::Node,
        b"ruby" => Family::Ruby,
        b"awk" | b"gawk" | b"mawk" | b"nawk" => Family::Awk,
        b"php" | b"php-cli" => Family::Php,
        b"tclsh" | b"wish" | b"jimsh" => Family::Tcl,
        _ => return None,
    })
}

fn file_name(path: &[u8]) -> &[u8] {
    path.rsplit(|c| *c == b'/').next().unwrap_or(path)
}

/// The applet a multi-call binary (busybox) runs with arguments `argv`: `argv[0]`'s name (a
/// login shell's without its `-`), or its first argument when that name is the binary's own.
pub fn applet_of(exe: &Path, argv: &[Vec<u8>]) -> Option<OsString> {
    if !file_name(exe.as_os_str().as_bytes()).starts_with(b"busybox") {
        return None;
    }
    let name = file_name(argv.first()?);
    let name = name.strip_prefix(b"-").unwrap_or(name);
    let applet = if name.starts_with(b"busybox") {
        file_name(argv.get(1)?)
    } else {
        name
    };
    (!applet.is_empty()).then(|| OsStr::from_bytes(applet).to_owned())
}

/// The code `exe` runs with arguments `argv` (`argv[0]` included), when `exe` is an
/// interpreter of a known family; `cwd` resolves a relative script's name.
pub fn code_of(exe: &Path, argv: &[Vec<u8>], cwd: Option<&Path>) -> Option<Code> {
    let mut name = file_name(exe.as_os_str().as_bytes());
    let mut args = argv.get(1..).unwrap_or(&[]);
    if name.starts_with(b"busybox") {
        // A multi-call binary: the applet is argv[0]'s name (a login shell's starts with `-`),
        // or its first argument.
        name = file_name(argv.first()?);
        name = name.strip_prefix(b"-").unwrap_or(name);
        if name.starts_with(b"busybox") {
            name = argv.get(1)?;
            args = argv.get(2..).unwrap_or(&[]);
        }
    }
    let code = match family(name)? {
        Family::Shell => shell(args),
        Family::Python => options(args, &PYTHON),
        Family::Perl => options(args, &PERL),
        Family::Lua => options(args, &LUA),
        Family::Ruby => options(args, &RUBY),
        Family::Node => node(args),
        Family::Awk => awk(args),
        Family::Php => php(args),
        Family::Tcl => first_file(args),
    };
    Some(match code {
        Code::Script(p) if p.is_relative() => match cwd {
            Some(dir) => Code::Script(crate::paths::normalize(&dir.join(p))),
            None => Code::Script(p),
        },
        other => other,
    })
}

fn script(arg: &[u8]) -> Code {
    Code::Script(PathBuf::from(OsStr::from_bytes(arg)))
}

/// `sh [-abefhimnuvx] [-o option] [-c string | -s | file] [args]`, and bash's long options.
fn shell(args: &[Vec<u8>]) -> Code {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_slice() {
            b"--" => return it.next().map_or(Code::Inline(Inline::Stdin), |a| script(a)),
            b"-" => return Code::Inline(Inline::Stdin),
            b"--rcfile" | b"--init-file" => {
                it.next();
            }
            a if a.starts_with(b"--") => {}
            [b'-' | b'+', flags @ ..] => {
                if arg[0] == b'-' && flags.contains(&b'c') {
                    return Code::Inline(Inline::Argument);
                }
                if arg[0] == b'-' && flags.contains(&b's') {
                    return Code::Inline(Inline::Stdin);
                }
                for _ in flags.iter().filter(|c| matches!(c, b'o' | b'O')) {
                    it.next();
                }
            }
            _ => return script(arg),
        }
    }
    Code::Inline(Inline::Stdin)
}

/// The options of an interpreter of the common shape: single letters in clusters.
struct Syntax {
    /// Letters that end the options with inline code (their value is the code).
    inline: &'static [u8],
    /// Letters that take a value: the rest of the cluster, or the next argument.
    valued: &'static [u8],
    /// Letters whose value, if any, can only be the rest of the cluster.
    attached: &'static [u8],
    /// Letters followed by optional digits, then more letters (`perl -l0e`).
    digits: &'static [u8],
    /// Long options that take the next argument as their value.
    long_valued: &'static [&'static [u8]],
    /// The inline letter for a module by name.
    module: Option<u8>,
}

const PYTHON: Syntax = Syntax {
    inline: b"cm",
    valued: b"WX",
    attached: b"",
    digits: b"",
    long_valued: &[b"--check-hash-based-pycs"],
    module: Some(b'm'),
};

/// `-I` takes a directory attached or next; `-M`, `-m`, `-x`, `-d`, `-D`, `-i`, `-F` take
/// theirs attached only; `-l`, `-0`, `-C` optional digits.
const PERL: Syntax = Syntax {
    inline: b"eE",
    valued: b"I",
    attached: b"MmxdDiF",
    digits: b"l0C",
    long_valued: &[],
    module: None,
};

const LUA: Syntax = Syntax {
    inline: b"e",
    valued: b"l",
    attached: b"",
    digits: b"",
    long_valued: &[],
    module: None,
};

const RUBY: Syntax = Syntax {
    inline: b"e",
    valued: b"ICEr",
    attached: b"xTWKF",
    digits: b"0l",
    long_valued: &[],
    module: None,
};

/// The common shape ([`Syntax`]): `-` is standard input, `--` ends the options, the first other
/// argument is the script.
fn options(args: &[Vec<u8>], syntax: &Syntax) -> Code {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_slice() {
            b"--" => return it.next().map_or(Code::Inline(Inline::Stdin), |a| script(a)),
            b"-" => return Code::Inline(Inline::Stdin),
            a if a.starts_with(b"--") => {
                if syntax.long_valued.contains(&a) {
                    it.next();
                }
            }
            [b'-', flags @ ..] => {
                let mut i = 0;
                while let Some(c) = flags.get(i) {
                    if syntax.digits.contains(c) {
                        i += 1;
                        while flags.get(i).is_some_and(u8::is_ascii_digit) {
                            i += 1;
                        }
                        continue;
                    }
                    if syntax.inline.contains(c) {
                        return Code::Inline(if Some(*c) == syntax.module {
                            Inline::Module
                        } else {
                            Inline::Argument
                        });
                    }
                    if syntax.valued.contains(c) {
                        if i + 1 == flags.len() {
                            it.next();
                        }
                        break;
                    }
                    if syntax.attached.contains(c) {
                        break;
                    }
                    i += 1;
                }
            }
            _ => return script(arg),
        }
    }
    Code::Inline(Inline::Stdin)
}

fn node(args: &[Vec<u8>]) -> Code {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_slice() {
            b"-e" | b"--eval" | b"-p" | b"--print" => return Code::Inline(Inline::Argument),
            b"-r" | b"--require" | b"--import" | b"--loader" | b"--experimental-loader" => {
                it.next();
            }
            b"-" => return Code::Inline(Inline::Stdin),
            b"--" => return it.next().map_or(Code::Inline(Inline::Stdin), |a| script(a)),
            a if a.starts_with(b"-") => {}
            _ => return script(arg),
        }
    }
    Code::Inline(Inline::Stdin)
}

/// `awk [-F fs] [-v var=value] [-f progfile | 'program'] [file ...]`.
fn awk(args: &[Vec<u8>]) -> Code {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_slice() {
            b"-f" | b"--file" => {
                return it.next().map_or(Code::Inline(Inline::Stdin), |a| script(a))
            }
            a if a.starts_with(b"--file=") => return script(&a[7..]),
            a if a.starts_with(b"-f") && a.len() > 2 => return script(&a[2..]),
            b"-e" | b"--source" => return Code::Inline(Inline::Argument),
            // gawk: the program file for command-line use (like -f), and an include file.
            b"-E" | b"--exec" => {
                return it.next().map_or(Code::Inline(Inline::Stdin), |a| script(a))
            }
            b"-i" | b"--include" => {
                it.next();
            }
            b"-F" | b"-v" | b"--assign" | b"--field-separator" => {
                it.next();
            }
            b"--" => return Code::Inline(Inline::Argument),
            a if a.starts_with(b"-") && a.len() > 1 => {}
            _ => return Code::Inline(Inline::Argument),
        }
    }
    Code::Inline(Inline::Stdin)
}

fn php(args: &[Vec<u8>]) -> Code {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_slice() {
            b"-r" | b"-R" | b"-B" | b"-E" => return Code::Inline(Inline::Argument),
            b"-f" => return it.next().map_or(Code::Inline(Inline::Stdin), |a| script(a)),
            b"-c" | b"-d" | b"-z" | b"-S" | b"-t" => {
                it.next();
            }
            a if a.starts_with(b"-") => {}
            _ => return script(arg),
        }
    }
    Code::Inline(Inline::Stdin)
}

fn first_file(args: &[Vec<u8>]) -> Code {
    args.iter()
        .find(|a| !a.starts_with(b"-"))
        .map_or(Code::Inline(Inline::Stdin), |a| script(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(exe: &str, argv: &[&str]) -> Option<Code> {
        let argv: Vec<Vec<u8>> = argv.iter().map(|a| a.as_bytes().to_vec()).collect();
        code_of(Path::new(exe), &argv, Some(Path::new("/work")))
    }

    fn file(p: &str) -> Option<Code> {
        Some(Code::Script(PathBuf::from(p)))
    }

    const ARG: Option<Code> = Some(Code::Inline(Inline::Argument));
    const STDIN: Option<Code> = Some(Code::Inline(Inline::Stdin));

    #[test]
    fn shells() {
        assert_eq!(
            code("/usr/bin/dash", &["sh", "/tmp/x.sh"]),
            file("/tmp/x.sh")
        );
        assert_eq!(
            code("/usr/bin/bash", &["bash", "x.sh", "a"]),
            file("/work/x.sh")
        );
        assert_eq!(code("/usr/bin/bash", &["bash", "../x.sh"]), file("/x.sh"));
        assert_eq!(
            code("/usr/bin/dash", &["sh", "-e", "-o", "nounset", "/a"]),
            file("/a")
        );
        assert_eq!(
            code("/usr/bin/bash", &["bash", "--rcfile", "/r", "/a"]),
            file("/a")
        );
        assert_eq!(code("/usr/bin/dash", &["sh", "-c", "id"]), ARG);
        assert_eq!(code("/usr/bin/dash", &["sh", "-ec", "id"]), ARG);
        assert_eq!(code("/usr/bin/dash", &["sh", "-s", "a"]), STDIN);
        assert_eq!(code("/usr/bin/bash", &["-bash"]), STDIN);
        assert_eq!(code("/usr/bin/bash", &["bash", "--", "/a"]), file("/a"));
    }

    #[test]
    fn busybox_by_applet() {
        assert_eq!(code("/bin/busybox", &["sh", "/tmp/x"]), file("/tmp/x"));
        // A login shell's name.
        assert_eq!(code("/bin/busybox", &["-sh", "/tmp/x"]), file("/tmp/x"));
        assert_eq!(
            code("/bin/busybox", &["busybox", "ash", "/tmp/x"]),
            file("/tmp/x")
        );
        assert_eq!(code("/bin/busybox", &["awk", "BEGIN{}"]), ARG);
        let applet = |argv: &[&str]| {
            let argv: Vec<Vec<u8>> = argv.iter().map(|a| a.as_bytes().to_vec()).collect();
            applet_of(Path::new("/bin/busybox"), &argv)
        };
        assert_eq!(applet(&["wget", "-q"]), Some("wget".into()));
        assert_eq!(applet(&["-sh"]), Some("sh".into()));
        assert_eq!(applet(&["busybox", "sh", "-c", ":"]), Some("sh".into()));
        assert_eq!(applet(&["/bin/busybox", "/bin/ash"]), Some("ash".into()));
        assert_eq!(applet(&["busybox"]), None);
        assert_eq!(
            applet_of(Path::new("/usr/bin/dash"), &[b"sh".to_vec()]),
            None
        );
        // Not an interpreter applet: its arguments are not code.
        assert_eq!(code("/bin/busybox", &["cat", "/tmp/x"]), None);
        assert_eq!(code("/bin/busybox", &["busybox"]), None);
    }

    #[test]
    fn other_families() {
        assert_eq!(
            code(
                "/usr/bin/python3.11",
                &["python3", "-W", "ignore", "-u", "x.py"]
            ),
            file("/work/x.py")
        );
        assert_eq!(
            code("/usr/bin/python3.11", &["python3", "-Wignore", "/x.py"]),
            file("/x.py")
        );
        assert_eq!(code("/usr/bin/python3.11", &["python3", "-c", "1"]), ARG);
        assert_eq!(code("/usr/bin/python3.11", &["python3", "-Bc", "1"]), ARG);
        assert_eq!(
            code("/usr/bin/python3.11", &["python3", "-m", "http.server"]),
            Some(Code::Inline(Inline::Module))
        );
        assert_eq!(code("/usr/bin/python3.11", &["python3"]), STDIN);
        assert_eq!(code("/usr/bin/python3.11", &["python3", "-"]), STDIN);
        assert_eq!(code("/usr/bin/perl", &["perl", "-le", "print 1"]), ARG);
        assert_eq!(
            code("/usr/bin/perl", &["perl", "-w", "/a.pl"]),
            file("/a.pl")
        );
        // Values are not scripts, nor inline code.
        let perl = |args: &[&str]| code("/usr/bin/perl", &[&["perl"], args].concat());
        assert_eq!(perl(&["-I", "/opt/lib", "/a.pl"]), file("/a.pl"));
        assert_eq!(perl(&["-I/opt/lib", "/a.pl"]), file("/a.pl"));
        assert_eq!(perl(&["-Mre", "/tmp/x.pl"]), file("/tmp/x.pl"));
        assert_eq!(perl(&["-MFile::Temp", "/x.pl"]), file("/x.pl"));
        assert_eq!(perl(&["-l", "/x.pl"]), file("/x.pl"));
        assert_eq!(perl(&["-l0e", "print"]), ARG);
        assert_eq!(
            code(
                "/usr/bin/python3.11",
                &["python3", "--check-hash-based-pycs", "always", "/x.py"]
            ),
            file("/x.py")
        );
        assert_eq!(
            code("/usr/bin/gawk", &["gawk", "-E", "/p.awk"]),
            file("/p.awk")
        );
        assert_eq!(
            code("/usr/bin/gawk", &["gawk", "-i", "inc", "-f", "/p.awk"]),
            file("/p.awk")
        );
        assert_eq!(
            code("/usr/bin/php8.2", &["php", "-S", "0:80", "/r.php"]),
            file("/r.php")
        );
        assert_eq!(
            code("/usr/bin/lua5.4", &["lua", "-l", "m", "/a.lua"]),
            file("/a.lua")
        );
        assert_eq!(code("/usr/bin/lua5.4", &["lua", "-e", "x()"]), ARG);
        assert_eq!(
            code("/usr/bin/node", &["node", "-r", "m", "/a.js"]),
            file("/a.js")
        );
        assert_eq!(code("/usr/bin/node", &["node", "-e", "1"]), ARG);
        assert_eq!(
            code("/usr/bin/mawk", &["awk", "-F:", "{print}", "/etc/passwd"]),
            ARG
        );
        assert_eq!(
            code("/usr/bin/gawk", &["awk", "-v", "a=1", "-f", "/p.awk"]),
            file("/p.awk")
        );
        assert_eq!(code("/usr/bin/php8.2", &["php", "-r", "1;"]), ARG);
        assert_eq!(code("/usr/bin/php8.2", &["php", "/i.php"]), file("/i.php"));
    }

    #[test]
    fn not_interpreters() {
        assert_eq!(code("/usr/bin/cat", &["cat", "/tmp/x"]), None);
        assert_eq!(code("/usr/bin/shred", &["shred", "/tmp/x"]), None);
        assert_eq!(code("/opt/app/backup.sh", &["backup.sh"]), None);
    }

    #[test]
    fn a_relative_script_stays_relative_without_a_directory() {
        let argv = vec![b"sh".to_vec(), b"x.sh".to_vec()];
        assert_eq!(
            code_of(Path::new("/usr/bin/dash"), &argv, None),
            file("x.sh")
        );
    }
}
