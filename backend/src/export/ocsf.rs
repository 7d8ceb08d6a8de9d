//! Alerts as OCSF 1.1.0 findings, for SIEMs: Detection Findings (class 2004), except an
//! executable that could not be verified, a Compliance Finding (class 2003) whose check gave no
//! result; the mapping is documented field by field in `docs/BACKEND.md`.

use serde_json::{json, Map, Value};

use crate::store::AlertRow;

pub const OCSF_VERSION: &str = "1.1.0";

fn title(kind: &str) -> &'static str {
    match kind {
        "unknown_executable" => "Executable not in the baseline",
        "modified_executable" => "Executable differs from the baseline",
        "suspicious_exec" => "Suspicious execution",
        "unexpected_connection" => "Unexpected network connection",
        "unexpected_listener" => "Unexpected listening socket",
        "protected_file_changed" => "Protected file changed",
        "integrity_drift" => "File integrity drift",
        "agent_tamper" => "Tampering with the agent",
        "sensor_data_loss" => "Sensor data lost",
        "policy_rejected" => "Policy update rejected",
        "alerts_dropped" => "Alerts dropped from a full spool",
        "unverified_executable" => "Executable could not be verified against the baseline",
        "unexpected_lineage" => "Process started by an unexpected parent",
        "setuid_bit_set" => "Setuid or setgid bit set",
        "file_capability_set" => "File capabilities set",
        "loader_environment" => "Dynamic loader hijacked through the environment",
        "kernel_module_loaded" => "Kernel module loaded",
        "process_injection" => "Process attached to or memory written",
        "mount_changed" => "Filesystem mounted or remounted",
        "append_only_violated" => "Append-only file truncated or removed",
        "sensitive_file_read" => "Sensitive file read",
        "blocked_exec" => "Execution refused by the baseline",
        "blocked_connection" => "Network connection refused by the baseline",
        "blocked_listener" => "Listening port refused by the baseline",
        "would_block" => "Enforcement would refuse this",
        "enforcement_weakened" => "Enforcement weakened by local configuration",
        "agent_interrupted" => "Security agent ended without a clean stop",
        "device_silent" => "Device went silent without a clean stop",
        "device_returned" => "Silent device back online",
        _ => "Picket alert",
    }
}

/// The OCSF class of a kind: its uid and name. Every kind is something detected, but an
/// executable that could not be verified: the baseline's check of it gave no result, which
/// says nothing of a threat.
fn class(kind: &str) -> (u32, &'static str) {
    match kind {
        "unverified_executable" => (2003, "Compliance Finding"),
        _ => (2004, "Detection Finding"),
    }
}

/// OCSF severity_id and its caption.
fn severity(severity: &str) -> (u8, &'static str) {
    match severity {
        "medium" => (3, "Medium"),
        "high" => (4, "High"),
        "critical" => (5, "Critical"),
        _ => (0, "Unknown"),
    }
}

fn file(path: &str, sha256: Option<&Value>) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    let mut f = json!({ "path": path, "name": name, "type_id": 1, "type": "Regular File" });
    if let Some(hash) = sha256.and_then(Value::as_str) {
        f["hashes"] = json!([{ "algorithm_id": 3, "algorithm": "SHA-256", "value": hash }]);
    }
    f
}

fn process(p: &Value) -> Value {
    let mut out = Map::new();
    if let Some(pid) = p.get("pid").filter(|v| !v.is_null()) {
        out.insert("pid".into(), pid.clone());
    }
    if let Some(exe) = p.get("exe").and_then(Value::as_str) {
        out.insert("file".into(), file(exe, p.get("sha256")));
    }
    if let Some(argv) = p.get("argv").and_then(Value::as_array) {
        let words: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
        if !words.is_empty() {
            out.insert("cmd_line".into(), Value::String(words.join(" ")));
        }
    }
    if let Some(uid) = p.get("uid").and_then(Value::as_u64) {
        out.insert("user".into(), json!({ "uid": uid.to_string() }));
    }
    let parent_exe = p
        .get("ancestry")
        .and_then(|a| a.get(0))
        .and_then(|a| a.get("exe"))
        .and_then(Value::as_str);
    let ppid = p.get("ppid").filter(|v| !v.is_null());
    if ppid.is_some() || parent_exe.is_some() {
        let mut parent = Map::new();
        if let Some(ppid) = ppid {
            parent.insert("pid".into(), ppid.clone());
        }
        if let Some(exe) = parent_exe {
            parent.insert("file".into(), file(exe, None));
        }
        out.insert("parent_process".into(), Value::Object(parent));
    }
    Value::Object(out)
}

/// One alert as a Detection Finding.
pub fn finding(a: &AlertRow) -> Value {
    // The backend's own alerts are numbered by presence change, not in the device's sequence.
    let uid = if a.format == crate::store::presence::BACKEND_FORMAT {
        format!("{}:backend:{}", a.device_id, a.seq)
    } else {
        format!("{}:{}", a.device_id, a.seq)
    };
    let (severity_id, severity_name) = severity(&a.severity);
    let mut message = title(&a.kind).to_string();
    if let Some(path) = &a.path {
        message.push_str(": ");
        message.push_str(path);
    }
    let (class_uid, class_name) = class(&a.kind);
    let mut finding = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": class_uid * 100 + 1,
        "type_name": format!("{class_name}: Create"),
        "severity_id": severity_id,
        "severity": severity_name,
        "status_id": 1,
        "status": "New",
        "time": a.time_ms,
        "start_time": a.first_ms,
        "end_time": a.last_ms,
        "count": a.count,
        "message": message,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": uid,
            "logged_time": a.received_ms,
            "product": {
                "name": "Picket",
                "vendor_name": "Picket",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "finding_info": {
            "uid": uid,
            "title": title(&a.kind),
            "types": [a.kind],
            "created_time": a.time_ms,
            "first_seen_time": a.first_ms,
            "last_seen_time": a.last_ms,
            "analytic": { "name": a.rule, "type_id": 1, "type": "Rule" },
        },
        "device": {
            "uid": a.device_id,
            "name": a.device_id,
            "type_id": 7,
            "type": "IOT",
        },
        "unmapped": {
            "picket_kind": a.kind,
            "seq": a.seq,
            "boot_id": a.boot_id,
            "path": a.path,
            "details": a.details,
        },
    });
    if class_uid == 2003 {
        // The check is the policy's rule; Warning: it did not yield a result.
        let mut compliance = json!({
            "standards": ["Picket baseline policy"],
            "control": a.rule,
            "status_id": 2,
            "status": "Warning",
        });
        if let Some(reason) = a.details.get("reason").and_then(Value::as_str) {
            compliance["status_detail"] = Value::String(reason.into());
        }
        finding["compliance"] = compliance;
    }
    let mut evidence = Map::new();
    if let Some(p) = &a.process {
        evidence.insert("process".into(), process(p));
        for key in ["ancestry", "argv_dropped", "cgroup_id"] {
            if let Some(v) = p.get(key).filter(|v| !v.is_null()) {
                finding["unmapped"][key] = v.clone();
            }
        }
    }
    if let Some(path) = &a.path {
        if a.kind.contains("connection") || a.kind.contains("listener") {
            evidence.insert("dst_endpoint".into(), json!({ "name": path }));
        } else {
            evidence.insert("file".into(), file(path, a.details.get("sha256")));
        }
    }
    if !evidence.is_empty() {
        finding["evidences"] = json!([Value::Object(evidence)]);
    }
    finding
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_an_alert_to_a_detection_finding() {
        let row = AlertRow {
            device_id: "gw-1".into(),
            seq: 7,
            boot_id: "b".into(),
            time_ms: 1000,
            received_ms: 2000,
            kind: "unknown_executable".into(),
            severity: "high".into(),
            rule: "executables".into(),
            path: Some("/tmp/evil".into()),
            details: json!({"sha256": "ab12"}),
            count: 1,
            first_ms: 1000,
            last_ms: 1000,
            process: Some(json!({
                "pid": 42, "ppid": 1, "uid": 0, "exe": "/tmp/evil", "sha256": "ab12",
                "argv": ["evil", "-x"], "argv_dropped": 0,
                "ancestry": [{"pid": 1, "exe": "/sbin/init"}], "cgroup_id": 9
            })),
            format: "postcard".into(),
        };
        let f = finding(&row);
        assert_eq!(f["class_uid"], 2004);
        assert_eq!(f["type_uid"], 200401);
        assert_eq!(f["severity_id"], 4);
        assert_eq!(f["finding_info"]["uid"], "gw-1:7");
        assert_eq!(f["finding_info"]["types"][0], "unknown_executable");
        assert_eq!(f["device"]["uid"], "gw-1");
        let p = &f["evidences"][0]["process"];
        assert_eq!(p["pid"], 42);
        assert_eq!(p["cmd_line"], "evil -x");
        assert_eq!(p["file"]["hashes"][0]["value"], "ab12");
        assert_eq!(p["parent_process"]["file"]["path"], "/sbin/init");
        assert_eq!(f["evidences"][0]["file"]["name"], "evil");
        assert_eq!(f["unmapped"]["cgroup_id"], 9);
        assert!(f.get("compliance").is_none());
    }

    #[test]
    fn an_unverified_executable_is_a_compliance_finding_without_a_result() {
        let row = AlertRow {
            device_id: "gw-1".into(),
            seq: 8,
            boot_id: "b".into(),
            time_ms: 1000,
            received_ms: 2000,
            kind: "unverified_executable".into(),
            severity: "medium".into(),
            rule: "executables".into(),
            path: Some("/usr/bin/awk".into()),
            details: json!({"expected": "ab12", "reason": "larger than 268435456 bytes, not hashed"}),
            count: 1,
            first_ms: 1000,
            last_ms: 1000,
            process: Some(
                json!({"pid": 42, "exe": "/usr/bin/awk", "sha256": null, "argv": ["awk"]}),
            ),
            format: "postcard".into(),
        };
        let f = finding(&row);
        assert_eq!(f["class_uid"], 2003);
        assert_eq!(f["class_name"], "Compliance Finding");
        assert_eq!(
            (f["category_uid"].clone(), f["activity_id"].clone()),
            (json!(2), json!(1))
        );
        assert_eq!(f["type_uid"], 200301);
        assert_eq!(f["type_name"], "Compliance Finding: Create");
        assert_eq!(
            (f["severity_id"].clone(), f["severity"].clone()),
            (json!(3), json!("Medium"))
        );
        assert_eq!(
            f["finding_info"]["title"],
            "Executable could not be verified against the baseline"
        );
        assert_eq!(f["finding_info"]["types"][0], "unverified_executable");
        let c = &f["compliance"];
        assert_eq!(c["control"], "executables");
        assert_eq!(
            (c["status_id"].clone(), c["status"].clone()),
            (json!(2), json!("Warning"))
        );
        assert_eq!(
            c["status_detail"],
            "larger than 268435456 bytes, not hashed"
        );
        // No hash is claimed for the file: the expected one is in the details.
        let file = &f["evidences"][0]["file"];
        assert_eq!(file["path"], "/usr/bin/awk");
        assert!(file.get("hashes").is_none());
        assert!(f["evidences"][0]["process"]["file"].get("hashes").is_none());
        assert_eq!(f["unmapped"]["details"]["expected"], "ab12");
    }
}
