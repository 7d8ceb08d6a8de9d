//! `picket baseline learn` with the real sensors: what the device does while it learns ends up
//! in the draft policy, which loads as a valid policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    ffi::OsStr,
    fs,
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    process::Command,
    time::Duration,
};

use picket_test_support::bin::picket;
use picket_test_support::{sha256_file, Agent};

#[test]
fn learns_executables_peers_and_listeners_into_a_draft() {
    let dir = std::env::temp_dir().join(format!("picket-learn-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    // A binary of our own, so its path and hash are unique to this test.
    let tool = dir.join("learned-tool");
    fs::copy("/bin/true", &tool).unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    let base = dir.join("base.toml");
    fs::write(
        &base,
        "[metadata]\nname = \"base\"\ndevice_class = \"lab\"\nserial = 3\n\
         created = \"2026-01-01T00:00:00Z\"\n\n[[executable]]\npath = \"/opt/kept\"\n\
         sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
    )
    .unwrap();
    let draft = dir.join("draft.toml");
    // A script run by the shell, which runs the tool: the script is learned with its hash, the
    // shell as an interpreter, and the lineage script → tool. Written before learning starts
    // (the test checks the one file written while learning).
    let script = dir.join("job.sh");
    fs::write(&script, format!("{} && :\n", tool.display())).unwrap();
    // A file to set the setuid bit on, in a directory of its own (the test checks the one file
    // written in `dir` while learning).
    let suid = dir.join("suid");
    fs::create_dir_all(&suid).unwrap();
    fs::write(suid.join("tool"), b"").unwrap();

    let args = [
        OsStr::new("baseline"),
        OsStr::new("learn"),
        OsStr::new("--for"),
        OsStr::new("6s"),
        OsStr::new("--merge"),
        base.as_os_str(),
        OsStr::new("--out"),
        draft.as_os_str(),
    ];
    // Returns once the sensors are attached (60 s at most).
    let learn = Agent::start(picket(), &args, "learning for");

    assert!(Command::new(&tool).status().unwrap().success());
    // A privileged action: the setuid bit set.
    assert!(Command::new("/usr/bin/chmod")
        .arg("u+s")
        .arg(suid.join("tool"))
        .status()
        .unwrap()
        .success());
    assert!(Command::new("/bin/sh")
        .arg(&script)
        .status()
        .unwrap()
        .success());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    fs::write(dir.join("written.log"), b"x").unwrap();

    let out = learn.wait(Duration::from_secs(60));
    let status = out.status.expect("wait() returns once it exited");
    assert!(status.success(), "learn failed: {:?}", out.stderr);

    let text = fs::read_to_string(&draft).unwrap();
    let policy = picket_policy::load_toml(&text, "draft.toml").unwrap();
    // Built on the base policy: its next serial, its entries kept.
    assert_eq!(policy.metadata.serial, 4);
    assert_eq!(policy.metadata.device_class, "lab");
    assert!(policy
        .executables
        .iter()
        .any(|e| e.path.as_str() == "/opt/kept"));
    let learned = policy
        .executables
        .iter()
        .find(|e| e.path.as_str() == tool.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} not learned:\n{text}", tool.display()));
    assert_eq!(learned.sha256.to_string(), sha256_file(&tool));
    let script_text = script.to_str().unwrap();
    let learned = policy
        .executables
        .iter()
        .find(|e| e.path.as_str() == script_text)
        .unwrap_or_else(|| panic!("{script_text} not learned:\n{text}"));
    assert_eq!(learned.sha256.to_string(), sha256_file(&script));
    let b = policy
        .behaviour
        .as_ref()
        .expect("a learned draft has a [behaviour] section");
    assert!(
        b.privileged
            .iter()
            .any(|p| p.action == picket_policy::model::Action::Setuid
                && p.executable.as_str() == "/usr/bin/chmod"),
        "the setuid bit set by chmod not learned:\n{text}"
    );
    assert!(
        b.interpreters.iter().any(|g| g.as_str() == "/usr/bin/dash"),
        "the shell not learned as an interpreter:\n{text}"
    );
    assert!(
        b.lineage
            .iter()
            .any(|l| l.parent.as_str() == script_text && l.child.as_str() == tool.to_str().unwrap()),
        "lineage script -> tool not learned:\n{text}"
    );
    assert!(
        policy.network.listen.iter().any(|l| l.port.0 == port),
        "listener on {port} not learned:\n{text}"
    );
    assert!(
        policy
            .network
            .outbound
            .iter()
            .any(|o| o.ports.contains(port) && o.cidr.to_string() == "127.0.0.1/32"),
        "connection to {port} not learned:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "# written while learning: {}",
            dir.join("written.log").display()
        )),
        "written file not noted:\n{text}"
    );
    fs::remove_dir_all(&dir).unwrap();
}
