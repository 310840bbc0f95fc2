//! `--check-config` loads the certificates and keys a configuration names, as `nginx -t` does:
//! a missing or unreadable file is exit 64 naming the field (before the fix it said "ok").

use std::process::Command;

const EDGE_BIN: &str = env!("CARGO_BIN_EXE_shake-edge");
const EXAMPLE: &str = include_str!("../shake-edge.example.toml");

fn check(name: &str, text: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("shake-edge-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(EDGE_BIN).arg("--check-config").arg(&path).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn check_config_loads_every_tls_file_and_names_the_field() {
    let dir = std::env::temp_dir().join(format!("shake-edge-check-certs-{}", std::process::id()));
    shake_allocator::dev_certs::generate(&dir, &[1]).unwrap();
    let certs = dir.display().to_string();
    let good = EXAMPLE.replace("target/demo/certs", &certs);
    let (code, out) = check("good.toml", &good);
    assert_eq!(code, Some(0), "{out}");

    let cases = [
        ("tls.cert", "cert = \"CERTS/edge-1.pem\"\nkey", "cert = \"/nonexistent/edge.pem\"\nkey"),
        (
            "tls.key",
            "key = \"CERTS/edge-1.key\"\n\n[allocator]",
            "key = \"/nonexistent/edge.key\"\n\n[allocator]",
        ),
        ("allocator.ca", "ca = \"CERTS/ca.pem\"", "ca = \"/nonexistent/ca.pem\""),
    ];
    for (field, from, to) in cases {
        let from = from.replace("CERTS", &certs);
        assert!(good.contains(&from), "{field}: the example changed");
        let (code, out) = check("bad.toml", &good.replacen(&from, to, 1));
        assert_eq!(code, Some(64), "{field}: {out}");
        assert!(out.contains(&format!("`{field}`")), "{field} not named: {out}");
    }
    // A key file that is not a key.
    let swapped = good.replacen(
        &format!("key = \"{certs}/edge-1.key\""),
        &format!("key = \"{certs}/edge-1.pem\""),
        1,
    );
    let (code, out) = check("swapped.toml", &swapped);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("`tls.key`"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}
