//! Names that come from the cluster and must be safe where we use them: a
//! member's node name as a file name under `members/`, and a role as a host
//! name in the hosts file. Node names and tags are chosen by other machines,
//! so nothing here trusts them.

/// The file name of a member under `members/`: `<name>.json` when the name is
/// made only of `[A-Za-z0-9._@+:_-]` (and is not all dots), otherwise with
/// every other byte (and `%`) percent-encoded. Injective, so no two members
/// share a file; names that would still exceed the file-name limit are cut
/// and suffixed `~<hash>` ('~' never appears otherwise).
pub fn member_file_name(name: &str) -> String {
    const MAX: usize = 240;
    let all_dots = name.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(name.len() + 5);
    for b in name.bytes() {
        let plain = b.is_ascii_alphanumeric() || b"._@+:-_".contains(&b);
        if plain && !(all_dots && b == b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX {
        out.truncate(MAX - 17);
        out.push_str(&format!("~{:016x}", fnv1a(name.as_bytes())));
    }
    out.push_str(".json");
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Whether `role` may stand as a host name in the hosts file: ASCII letters,
/// digits, '-', '_' and '.', not starting with '-' or '.', at most 253 bytes.
/// (Underscores are not RFC 1123 but the original's default role `no_role`
/// has one, and resolvers read them from the hosts file without complaint.)
pub fn is_host_name(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 253
        && !role.starts_with(['-', '.'])
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Whether `name` may be an event name: 1 to 128 bytes of
/// `[A-Za-z0-9._:@+-]`, not starting with '.'. Event names double as handler
/// file names, so nothing that could walk a path or hide a file passes.
pub fn is_event_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@+-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(member_file_name("node-1.example"), "node-1.example.json");
        assert_eq!(member_file_name("a@b:c+d_e"), "a@b:c+d_e.json");
    }

    #[test]
    fn hostile_names_stay_inside_their_directory() {
        for name in ["..", ".", "a/b", "../../etc/passwd", "x\0y", "\n", "", "ü"] {
            let f = member_file_name(name);
            assert!(!f.contains('/') && !f.contains('\0'), "{name:?} -> {f}");
            assert!(f != "..json" || name == ".", "{f}");
            assert!(
                f.len() > ".json".len() || name.is_empty(),
                "{name:?} -> {f}"
            );
            assert!(f.len() <= 255);
        }
        assert_eq!(member_file_name(".."), "%2E%2E.json");
        assert_eq!(member_file_name("a/b"), "a%2Fb.json");
    }

    #[test]
    fn distinct_names_get_distinct_files() {
        let long = "x".repeat(300);
        let longer = "x".repeat(301);
        let names = [
            "a%2Fb", "a/b", "..", "%2E%2E", "a b", "a%20b", &long, &longer, "a.json", "a",
        ];
        let files: HashSet<_> = names.iter().map(|n| member_file_name(n)).collect();
        assert_eq!(files.len(), names.len());
        assert!(member_file_name(&long).len() <= 255);
    }

    #[test]
    fn host_names() {
        for ok in ["web", "no_role", "db-1.internal", "A9"] {
            assert!(is_host_name(ok), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in [
            "", "a b", "a\nb", "a#b", "ü", "-a", ".a", "a\tb", "a'b", &long,
        ] {
            assert!(!is_host_name(bad), "{bad:?}");
        }
        assert!(is_host_name(&"a".repeat(253)));
    }

    #[test]
    fn event_names() {
        for ok in [
            "deploy",
            "member-join",
            "a.b",
            "x_y:z@w+1",
            &"e".repeat(128),
        ] {
            assert!(is_event_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            "a\0b",
            "é",
            &"e".repeat(129),
        ] {
            assert!(!is_event_name(bad), "{bad:?}");
        }
    }
}
