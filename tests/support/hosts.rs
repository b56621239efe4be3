//! Reading the managed block of a hosts file the way the tests check it:
//! one parser, with what each test holds the block to left to the test
//! (whether it must be there, closed, and every line `ip<TAB>role`).

use std::collections::BTreeMap;

/// The block as found: its lines in order, and whether an END line closed
/// it (a file read while serfnode rewrites it in place may show neither).
pub struct Block {
    /// Each line between BEGIN and END: `(ip, role)`, or the line itself
    /// when it is not `ip<TAB>role`.
    pub lines: Vec<Result<(String, String), String>>,
    pub closed: bool,
}

impl Block {
    /// The first block in `text`; `None` when there is no BEGIN line.
    pub fn find(text: &str) -> Option<Block> {
        let begin = text.find("# BEGIN serfnode")?;
        let mut lines = Vec::new();
        let mut closed = false;
        for l in text[begin..].lines().skip(1) {
            if l.starts_with("# END") {
                closed = true;
                break;
            }
            lines.push(
                l.split_once('\t')
                    .map(|(ip, role)| (ip.to_owned(), role.to_owned()))
                    .ok_or_else(|| l.to_owned()),
            );
        }
        Some(Block { lines, closed })
    }

    /// role → address of the well-formed lines.
    pub fn roles(&self) -> BTreeMap<String, String> {
        self.lines
            .iter()
            .filter_map(|l| l.as_ref().ok())
            .map(|(ip, role)| (role.clone(), ip.clone()))
            .collect()
    }

    /// role → address; panics, showing `text`, unless the block is closed
    /// and every line is `ip<TAB>role`.
    pub fn strict_roles(&self, text: &str) -> BTreeMap<String, String> {
        assert!(self.closed, "block closed in\n{text}");
        for l in &self.lines {
            if let Err(l) = l {
                panic!("{l:?} is not ip<TAB>role in\n{text}");
            }
        }
        self.roles()
    }
}
