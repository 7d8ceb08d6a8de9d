//! The agent's SHA-256 measured the way `bench/agent.sh` compares it with OpenSSL:
//!
//! - `hash_speed FILE COUNT`: hashes FILE COUNT times through the agent's own path
//!   (`enrich::hash::digest_of_file`: positioned reads into a 64 KiB buffer, SHA-256 as it goes),
//!   as `openssl dgst -sha256 FILE FILE ...` does; prints the digest in hex. The script times the
//!   whole process, as it times OpenSSL's.
//! - `hash_speed --blocks SIZE SECONDS`: hashes one SIZE-byte block in memory over and over for
//!   about SECONDS of its CPU time, as `openssl speed -evp sha256 -bytes SIZE` does; prints the
//!   bytes per second of CPU time (OpenSSL's `speed` divides by its user CPU time too).

use std::{fs::File, process::ExitCode};

use picket_agent::enrich::hash;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, size, seconds] if flag == "--blocks" => blocks(size, seconds),
        [file, count] => files(file, count),
        _ => Err("usage: hash_speed FILE COUNT | hash_speed --blocks SIZE SECONDS".to_string()),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hash_speed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn files(path: &str, count: &str) -> Result<String, String> {
    let count: u32 = count
        .parse()
        .map_err(|_| format!("COUNT {count:?} is not a whole number"))?;
    let mut last = None;
    for _ in 0..count {
        let file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("{path}: {e}"))?;
        let digest = hash::digest_of_file(&file, &meta).map_err(|e| format!("{path}: {e}"))?;
        last = Some(digest.sha256);
    }
    let digest = last.ok_or("COUNT is 0: nothing hashed")?;
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn blocks(size: &str, seconds: &str) -> Result<String, String> {
    let size: usize = size
        .parse()
        .map_err(|_| format!("SIZE {size:?} is not a whole number"))?;
    let seconds: f64 = seconds
        .parse()
        .map_err(|_| format!("SECONDS {seconds:?} is not a number"))?;
    let block: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut buf = vec![0u8; size.max(1)];
    let start = cpu_seconds();
    let mut hashed = 0u64;
    while cpu_seconds() - start < seconds {
        // 64 blocks between clock reads, each a digest of its own, as OpenSSL's loop.
        for _ in 0..64 {
            let digest = hash::sha256_chunks(&mut block.as_slice(), &mut buf, |_| {})
                .map_err(|e| e.to_string())?;
            std::hint::black_box(digest);
            hashed += size as u64;
        }
    }
    Ok(format!("{:.0}", hashed as f64 / (cpu_seconds() - start)))
}

/// The CPU time this process has used, in seconds.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
