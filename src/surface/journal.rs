//! The event journal: the recent user, member and `container` events as
//! newline-delimited JSON, for readers that run no handlers. This module owns
//! the ring that keeps them, their sequence numbers, the gap markers that say
//! where a reader lost some, the `events` and `events_since/<N>` files that
//! serve them. `serfnode watch`, which follows those files for plain
//! shells, is [`crate::operator::watch`].
//!
//! Lines (one flat JSON object each, always beginning `{"seq":<N>,`):
//!
//! ```text
//! {"seq":S,"time":T,"type":"user","name":..,"ltime":..,"payload":..,"from":{..}}
//! {"seq":S,"time":T,"type":"member","event":"member-join","members":[..]}
//! {"seq":S,"type":"gap","first_lost":F}
//! ```
//!
//! `time` is unix seconds. A gap line says events `F..=S` were (or may have
//! been) lost; `F` is `null` when unknown. Its `seq` is the *last* missing
//! number, so a reader that resumes from the seq of the last line it read
//! never sees a line twice. Queries are not journaled.
//!
//! Where gap lines come from: a reader behind the ring or holding another
//! run's number (`events_since`); events that never reached the journal
//! (`Journal::push_gap`: the agent dropped stream records for a slow
//! subscriber, records were dropped on our side, the stream was followed
//! anew after a reconnect), each with `F` null and its own number, placed
//! where the loss was noticed; and a mirror's jumps and re-bases (below).
//!
//! Sequence numbers go up by one per line within a daemon's run and start at
//! the journal's creation time in unix microseconds, so a number a reader
//! saved stays meaningful across a restart: the reader sees a gap, never an
//! old number reused for a different event.
//!
//! A child's journal mirrors its parent's and keeps the parent's numbers
//! while they go up. A parent's daemon that restarts with its clock stepped
//! back numbers its events below what the child holds; the child then
//! re-bases: it writes a gap line (`F` null) after its head and carries on
//! from there, numbering the parent's new run at a fixed offset above the
//! parent's numbers. So a child's numbers only ever go up, and may differ
//! from its parent's after such a restart.
//!
//! Files:
//! - `events`: the whole ring, oldest first.
//! - `events_since/<N>`: the lines with seq > N. If the ring no longer holds
//!   N+1, a gap line comes first; if N is ahead of the journal (a number from
//!   another run), a gap line with `first_lost: null` and then the whole ring.
//!   N = 0 means "everything kept", without a marker. The file is empty when
//!   nothing is newer, and an open fd on it gets POLLPRI once something is.
//!
//! Following without `watch`, from a shell (an unchanged file is served from
//! the page cache, so the loop costs the daemon nothing while idle; `n=0`
//! starts with everything kept, the seq of the last line of `events` with
//! only what comes next):
//!
//! ```sh
//! n=0
//! while :; do
//!     new=$(cat /serfnode/events_since/$n)
//!     if [ -z "$new" ]; then sleep 1; continue; fi
//!     printf '%s\n' "$new"
//!     n=$(printf '%s\n' "$new" | tail -n 1 | sed 's/^{"seq":\([0-9]*\),.*/\1/')
//! done
//! ```

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use imbl::Vector;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serfnode_fs::{Dir, Doc, Node, NodeKind, Parts};
use tokio::sync::watch as tokio_watch;
use tracing::info;

use crate::event::ClusterEvent;

/// The whole ring, as a file in the root.
pub const EVENTS: &str = "events";
/// The directory of `<N>` files, each the lines after sequence N.
pub(crate) const EVENTS_SINCE: &str = "events_since";
/// Lines kept when no capacity is configured.
pub(crate) const DEFAULT_CAPACITY: usize = 1024;

/// One journaled event. Serialised flat: `seq`, `time`, then the event's own
/// fields with its `type` first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// When the daemon took it, in unix seconds.
    pub time: f64,
    #[serde(flatten)]
    pub event: ClusterEvent,
}

/// One line of the ring: an event, or a gap a mirror recorded because its
/// parent's numbers jumped.
#[derive(Debug, Clone)]
enum Item {
    Event(Arc<Entry>),
    Gap { seq: u64, first_lost: Option<u64> },
}

impl Item {
    fn seq(&self) -> u64 {
        match self {
            Item::Event(e) => e.seq,
            Item::Gap { seq, .. } => *seq,
        }
    }

    fn write_line(&self, out: &mut Vec<u8>) {
        let written = match self {
            Item::Event(e) => serde_json::to_writer(&mut *out, &**e),
            Item::Gap { seq, first_lost } => serde_json::to_writer(
                &mut *out,
                &GapLine {
                    seq: *seq,
                    kind: "gap",
                    first_lost: *first_lost,
                },
            ),
        };
        written.expect("journal lines are plain json");
        out.push(b'\n');
    }
}

#[derive(Serialize)]
struct GapLine {
    seq: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    first_lost: Option<u64>,
}

/// One state of the journal, immutable: what one generation's files show.
#[derive(Debug, Clone)]
pub(crate) struct JournalSnap {
    /// Goes up by one on every change; the version of every journal file, so
    /// a (path, version) always means the same bytes.
    generation: u64,
    /// The newest line's seq; while empty, one below the first to be given.
    head: u64,
    /// Oldest first; seqs strictly increasing (every append is above `head`).
    items: Vector<Item>,
    /// The ring rendered once, shared by `events` and every `events_since/N`
    /// of this generation (each of those adds at most a gap line of its own).
    rendered: OnceLock<Rendered>,
}

/// The bytes of every line of a snapshot, and where each line starts.
#[derive(Debug, Clone)]
struct Rendered {
    bytes: Arc<Vec<u8>>,
    starts: Vec<usize>,
}

impl JournalSnap {
    #[cfg(test)]
    fn generation(&self) -> u64 {
        self.generation
    }

    /// The seq of the newest line (one below the first seq while empty).
    #[cfg(test)]
    fn head(&self) -> u64 {
        self.head
    }

    /// Lines held, gap lines included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.len()
    }

    /// The journal's node for a root directory entry `name` (`events` or
    /// `events_since`), or None for any other name.
    pub fn node(self: &Arc<Self>, name: &str) -> Option<Node> {
        match name {
            EVENTS => Some(Node::File(self.events_doc())),
            EVENTS_SINCE => Some(Node::Dir(self.since_dir())),
            _ => None,
        }
    }

    /// The names `node` answers, for the root's listing.
    pub fn listing() -> [(&'static str, NodeKind); 2] {
        [(EVENTS, NodeKind::File), (EVENTS_SINCE, NodeKind::Dir)]
    }

    /// The `events` file, rendered on first read.
    pub fn events_doc(self: &Arc<Self>) -> Doc {
        let snap = Arc::clone(self);
        Doc::parts(self.generation, move || {
            Parts::whole(Arc::clone(&snap.rendered().bytes))
        })
    }

    fn rendered(&self) -> &Rendered {
        self.rendered.get_or_init(|| {
            let mut bytes = Vec::new();
            let mut starts = Vec::with_capacity(self.items.len());
            for item in &self.items {
                starts.push(bytes.len());
                item.write_line(&mut bytes);
            }
            Rendered {
                bytes: Arc::new(bytes),
                starts,
            }
        })
    }

    /// The `events_since` directory.
    pub fn since_dir(self: &Arc<Self>) -> Arc<dyn Dir> {
        Arc::new(SinceDir(Arc::clone(self)))
    }

    /// The bytes of `events`.
    #[cfg(test)]
    pub(crate) fn render_all(&self) -> Vec<u8> {
        self.rendered().bytes.to_vec()
    }

    /// The bytes of `events_since/<n>`.
    #[cfg(test)]
    pub(crate) fn render_since(&self, n: u64) -> Vec<u8> {
        self.parts_since(n).to_vec()
    }

    /// `events_since/<n>`: its own gap line, if any, then a slice of the
    /// shared rendering.
    fn parts_since(&self, n: u64) -> Parts {
        let (marker, start) = self.since(n);
        let mut head = Vec::new();
        if let Some(gap) = marker {
            gap.write_line(&mut head);
        }
        let rendered = self.rendered();
        let from = rendered
            .starts
            .get(start)
            .copied()
            .unwrap_or(rendered.bytes.len());
        Parts {
            head,
            shared: Arc::clone(&rendered.bytes),
            range: from..rendered.bytes.len(),
        }
    }

    /// What a reader that has everything up to `n` gets: an optional leading
    /// gap line, then the ring from index `start`.
    fn since(&self, n: u64) -> (Option<Item>, usize) {
        let Some(oldest) = self.items.front().map(Item::seq) else {
            return (None, 0);
        };
        let first_lost = if n == 0 {
            // Not a sequence anyone was given: "from the start", no marker.
            return (None, 0);
        } else if n > self.head {
            // Another run's number (the clock moved back): what it lost is
            // unknown, so it gets everything held.
            None
        } else if n.saturating_add(1) < oldest {
            // Fell behind the ring.
            Some(n + 1)
        } else {
            let start = match self.items.binary_search_by(|it| it.seq().cmp(&n)) {
                Ok(i) => i + 1,
                Err(i) => i,
            };
            return (None, start);
        };
        // A gap the ring holds at its front continues the reader's own: one
        // line says it all.
        if let Some(Item::Gap { seq, .. }) = self.items.front() {
            return (
                Some(Item::Gap {
                    seq: *seq,
                    first_lost,
                }),
                1,
            );
        }
        let gap = Item::Gap {
            seq: oldest.saturating_sub(1),
            first_lost,
        };
        (Some(gap), 0)
    }

    /// The events (not gap lines) a reader that has everything up to `n`
    /// lacks: those with seq > n, or all of them when `n` is ahead of the
    /// journal (another run's number), as `events_since/<n>` shows them.
    pub fn entries_since(&self, n: u64) -> Vec<Entry> {
        let (_, start) = self.since(n);
        self.items
            .iter()
            .skip(start)
            .filter_map(|item| match item {
                Item::Event(e) => Some(Entry::clone(e)),
                Item::Gap { .. } => None,
            })
            .collect()
    }
}

/// `events_since/`: a file for every canonical decimal u64, listed as empty.
struct SinceDir(Arc<JournalSnap>);

impl Dir for SinceDir {
    fn get(&self, name: &str) -> Option<Node> {
        let n = parse_seq(name)?;
        let snap = Arc::clone(&self.0);
        // Lazy, and cheap to build: every publish asks again for each name a
        // reader has looked up.
        Some(Node::File(Doc::parts(self.0.generation, move || {
            snap.parts_since(n)
        })))
    }

    fn entries(&self) -> Vec<(String, NodeKind)> {
        Vec::new()
    }

    /// One name per number: only the recent ones are kept.
    fn open_ended(&self) -> bool {
        true
    }
}

/// A sequence number written the one way `u64::to_string` writes it, so each
/// number has exactly one file name (no sign, no leading zeros).
fn parse_seq(name: &str) -> Option<u64> {
    let canonical =
        name.bytes().all(|b| b.is_ascii_digit()) && (name == "0" || !name.starts_with('0'));
    if canonical {
        name.parse().ok()
    } else {
        None
    }
}

/// The journal: a bounded ring of lines, shared by whoever takes events and
/// whoever publishes its files. Cheap to clone.
///
/// The owner publishes a tree with the new snapshot's nodes on every change
/// `subscribe` reports. A mount serves one journal for its whole life: file
/// versions are the journal's generations, which a second journal would
/// repeat with other bytes.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Sent to under `state`'s lock, so the latest value is the latest state.
    tx: tokio_watch::Sender<Arc<JournalSnap>>,
}

struct State {
    capacity: usize,
    /// The seq the next pushed event gets; `next - 1` is the head.
    next: u64,
    generation: u64,
    items: Vector<Item>,
    /// Where a mirror stands in its parent's numbering.
    parent: ParentSeqs,
}

/// A mirror's account of its parent's numbers.
#[derive(Debug, Default)]
struct ParentSeqs {
    /// The newest parent seq mirrored (in the parent's numbering).
    last: Option<u64>,
    /// Added to the parent's seqs of its current run (non-zero after a
    /// re-base).
    offset: u64,
    /// A new link whose first entries will tell whether the parent is the
    /// same run (its numbers never go back) or a new one.
    undecided: bool,
}

impl State {
    fn append(&mut self, item: Item) {
        debug_assert!(self.items.back().is_none_or(|last| last.seq() < item.seq()));
        self.next = item.seq().saturating_add(1);
        self.items.push_back(item);
        while self.items.len() > self.capacity {
            self.items.pop_front();
        }
    }

    fn snap(&self) -> Arc<JournalSnap> {
        Arc::new(JournalSnap {
            generation: self.generation,
            head: self.next - 1,
            items: self.items.clone(),
            rendered: OnceLock::new(),
        })
    }

    /// Whether `entries` (the first of a link) come from a new run of the
    /// parent, `last` being the newest parent seq mirrored. Within a run the
    /// parent's numbers never go back: its backlog (its whole ring) ends at or
    /// above `last` and holds the same entry under `last` if it still has it;
    /// later entries are above `last`.
    fn new_run(&self, last: u64, backlog: bool, entries: &[Entry]) -> bool {
        let (Some(first), Some(newest)) = (entries.first(), entries.last()) else {
            return false;
        };
        if !backlog {
            return first.seq <= last;
        }
        let held = self.items.iter().rev().find_map(|item| match item {
            Item::Event(e) => Some(e.time),
            Item::Gap { .. } => None,
        });
        let differs = entries
            .iter()
            .find(|e| e.seq == last)
            .is_some_and(|e| Some(e.time) != held);
        newest.seq < last || differs
    }

    /// Appends a gap line with an unknown start at the next seq, unless the
    /// newest line already is one (one loss, however many times noticed).
    fn gap(&mut self) -> bool {
        if let Some(Item::Gap {
            first_lost: None, ..
        }) = self.items.back()
        {
            return false;
        }
        let seq = self.next;
        self.append(Item::Gap {
            seq,
            first_lost: None,
        });
        true
    }
}

impl Journal {
    /// A journal keeping up to `capacity` lines (at least one), whose first
    /// seq is now in unix microseconds.
    pub fn new(capacity: usize) -> Journal {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Journal::with_start(capacity, micros.max(1))
    }

    /// A journal whose first seq is `first_seq`, which must be at least 1
    /// (readers use 0 for "from the start").
    pub fn with_start(capacity: usize, first_seq: u64) -> Journal {
        assert!(first_seq >= 1, "journal sequences start at 1 or later");
        let state = State {
            capacity: capacity.max(1),
            next: first_seq,
            generation: 0,
            items: Vector::new(),
            parent: ParentSeqs::default(),
        };
        let (tx, _) = tokio_watch::channel(state.snap());
        Journal {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                tx,
            }),
        }
    }

    /// Journals `event`, taken at `at`, and returns its seq; queries are not
    /// journaled (None).
    pub fn push(&self, event: ClusterEvent, at: SystemTime) -> Option<u64> {
        if matches!(event, ClusterEvent::Query { .. }) {
            return None;
        }
        let time = at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut state = self.shared.state.lock();
        let seq = state.next;
        state.append(Item::Event(Arc::new(Entry { seq, time, event })));
        self.changed(&mut state);
        Some(seq)
    }

    /// Records that events may have been lost here without a trace (see the
    /// module doc): a gap line with `first_lost: null`. Noticing the same
    /// loss again before another event adds nothing (false).
    pub fn push_gap(&self) -> bool {
        let mut state = self.shared.state.lock();
        let added = state.gap();
        if added {
            self.changed(&mut state);
        }
        added
    }

    /// Appends entries received from the parent's journal. `link_start`: the
    /// first entries of a new connection to the parent (its backlog).
    ///
    /// The parent's seqs are kept (plus the offset of a re-base). Entries
    /// already held are skipped. A jump in the numbers (the parent's ring
    /// moved on, or it restarted with a later clock) becomes a gap line,
    /// except in a journal that never held anything: that one takes the
    /// parent's numbers as they come. A parent whose numbers went back (it
    /// restarted with its clock stepped back) is a new run: a gap line with an
    /// unknown start, then its entries numbered on from this head. Within one
    /// run a parent's numbers never go back, so its backlog on a new link
    /// ends at or above what this mirror has seen.
    pub fn mirror(&self, entries: Vec<Entry>, link_start: bool) {
        let mut state = self.shared.state.lock();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| !matches!(e.event, ClusterEvent::Query { .. }))
            .collect();
        if link_start {
            state.parent.undecided = true;
        }
        let mut changed = false;
        if let (true, Some(first)) = (state.parent.undecided, entries.first()) {
            state.parent.undecided = false;
            let last = state.parent.last;
            if last.is_some_and(|last| state.new_run(last, link_start, &entries)) {
                changed |= state.gap();
                let base = state.next;
                state.parent.offset = base.saturating_sub(first.seq);
                state.parent.last = None;
                info!(
                    parent_seq = first.seq,
                    seq = base,
                    "journal mirror: the parent's numbers went back (a new run); numbering on after a gap"
                );
            }
        }
        for mut entry in entries {
            let parent_seq = entry.seq;
            if state.parent.last.is_some_and(|last| parent_seq <= last) {
                continue;
            }
            entry.seq = parent_seq.saturating_add(state.parent.offset);
            if !state.items.is_empty() {
                let next = state.next;
                if entry.seq < next {
                    // Only a saturated offset gets here: never number backwards.
                    continue;
                }
                if entry.seq > next {
                    info!(
                        first_lost = next,
                        last_lost = entry.seq - 1,
                        "journal mirror: the parent's events jumped; recording a gap"
                    );
                    state.append(Item::Gap {
                        seq: entry.seq - 1,
                        first_lost: Some(next),
                    });
                }
            }
            state.parent.last = Some(parent_seq);
            state.append(Item::Event(Arc::new(entry)));
            changed = true;
        }
        if changed {
            self.changed(&mut state);
        }
    }

    /// The seq this journal gives the parent's entry `parent_seq` (for a
    /// child's start, kept in the child's numbering).
    pub fn mirrored_seq(&self, parent_seq: u64) -> u64 {
        parent_seq.saturating_add(self.shared.state.lock().parent.offset)
    }

    fn changed(&self, state: &mut State) {
        state.generation += 1;
        self.shared.tx.send_replace(state.snap());
    }

    /// The current state.
    pub fn snapshot(&self) -> Arc<JournalSnap> {
        Arc::clone(&self.shared.tx.borrow())
    }

    /// Every change, as the snapshot after it (a slow receiver sees the
    /// latest).
    pub fn subscribe(&self) -> tokio_watch::Receiver<Arc<JournalSnap>> {
        self.shared.tx.subscribe()
    }

    /// See [`JournalSnap::entries_since`].
    pub fn entries_since(&self, n: u64) -> Vec<Entry> {
        self.snapshot().entries_since(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::Raiser;
    use serde_json::{json, Value};
    use std::time::Duration;

    /// A user event as the journal takes it (for tests of its readers too).
    pub(crate) fn user(name: &str, payload: Value) -> ClusterEvent {
        ClusterEvent::User {
            name: name.into(),
            ltime: 7,
            payload,
            from: None,
        }
    }

    fn at(secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    }

    /// A file's lines, parsed.
    fn lines(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn seqs(bytes: &[u8]) -> Vec<u64> {
        lines(bytes)
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect()
    }

    fn filled(capacity: usize, first: u64, count: usize) -> Journal {
        let j = Journal::with_start(capacity, first);
        for i in 0..count {
            j.push(user("e", json!(i)), at(1.0)).unwrap();
        }
        j
    }

    fn read(snap: &Arc<JournalSnap>, path: &str) -> Vec<u8> {
        let node = match path.split_once('/') {
            Some((dir, name)) => match snap.node(dir) {
                Some(Node::Dir(d)) => d.get(name),
                _ => panic!("no directory {dir}"),
            },
            None => snap.node(path),
        };
        match node {
            Some(Node::File(doc)) => {
                assert_eq!(doc.version(), snap.generation());
                doc.render()
            }
            _ => panic!("no file {path}"),
        }
    }

    #[test]
    fn sequences_start_at_the_creation_time_in_microseconds() {
        let micros = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let before = micros(SystemTime::now());
        let j = Journal::new(DEFAULT_CAPACITY);
        let after = micros(SystemTime::now());
        let first = j.push(user("a", Value::Null), SystemTime::now()).unwrap();
        assert!(
            (before..=after).contains(&first),
            "{before} {first} {after}"
        );
        let second = j.push(user("b", Value::Null), SystemTime::now()).unwrap();
        assert_eq!(second, first + 1);
        assert_eq!(j.snapshot().head(), second);
    }

    #[test]
    fn a_full_ring_drops_its_oldest() {
        let j = filled(3, 100, 5);
        let snap = j.snapshot();
        assert_eq!(snap.len(), 3);
        assert_eq!(snap.head(), 104);
        assert_eq!(seqs(&read(&snap, EVENTS)), [102, 103, 104]);
        let payloads: Vec<_> = lines(&read(&snap, EVENTS))
            .iter()
            .map(|l| l["payload"].clone())
            .collect();
        assert_eq!(payloads, [json!(2), json!(3), json!(4)]);
    }

    #[test]
    fn since_n_shows_newer_lines_and_marks_what_fell_out_of_the_ring() {
        let j = filled(3, 100, 5); // keeps 102..=104
        let snap = j.snapshot();
        let since = |n: u64| read(&snap, &format!("{EVENTS_SINCE}/{n}"));

        let behind = since(100);
        let first = std::str::from_utf8(&behind)
            .unwrap()
            .lines()
            .next()
            .unwrap();
        assert_eq!(first, r#"{"seq":101,"type":"gap","first_lost":101}"#);
        assert_eq!(seqs(&behind), [101, 102, 103, 104]);
        assert_eq!(
            lines(&since(50))[0],
            json!({"seq": 101, "type": "gap", "first_lost": 51})
        );

        assert_eq!(
            seqs(&since(101)),
            [102, 103, 104],
            "nothing lost: no marker"
        );
        assert_eq!(seqs(&since(103)), [104]);
        assert!(since(104).is_empty(), "nothing newer than the head");
        assert_eq!(seqs(&since(0)), [102, 103, 104], "0 is from the start");
        assert_eq!(snap.entries_since(102).len(), 2);
    }

    #[test]
    fn since_a_number_ahead_of_the_journal_is_a_gap_then_the_whole_ring() {
        let j = filled(3, 100, 5);
        let snap = j.snapshot();
        let file = read(&snap, &format!("{EVENTS_SINCE}/105"));
        let got = lines(&file);
        assert_eq!(
            got[0],
            json!({"seq": 101, "type": "gap", "first_lost": null})
        );
        assert_eq!(seqs(&file), [101, 102, 103, 104]);
        assert_eq!(snap.entries_since(u64::MAX).len(), 3);

        // An empty journal has nothing to say to anyone.
        let empty = Journal::with_start(3, 100).snapshot();
        assert!(read(&empty, &format!("{EVENTS_SINCE}/5000")).is_empty());
        assert!(read(&empty, &format!("{EVENTS_SINCE}/0")).is_empty());
        assert!(read(&empty, EVENTS).is_empty());
    }

    #[test]
    fn since_dir_takes_only_canonical_numbers_and_lists_nothing() {
        let snap = filled(3, 100, 1).snapshot();
        let Some(Node::Dir(dir)) = snap.node(EVENTS_SINCE) else {
            panic!("events_since is a directory");
        };
        assert!(dir.entries().is_empty());
        for bad in [
            "",
            "x",
            "+1",
            "-1",
            "01",
            "1.0",
            " 1",
            "18446744073709551616",
        ] {
            assert!(dir.get(bad).is_none(), "{bad:?}");
        }
        for good in ["0", "1", "100", "18446744073709551615"] {
            assert!(matches!(dir.get(good), Some(Node::File(_))), "{good:?}");
        }
        assert!(snap.node("other").is_none());
    }

    #[test]
    fn every_change_is_a_new_generation_and_published() {
        let j = Journal::with_start(3, 100);
        let mut rx = j.subscribe();
        let g0 = rx.borrow_and_update().generation();
        assert!(!rx.has_changed().unwrap());
        j.push(user("a", Value::Null), at(1.0));
        assert!(rx.has_changed().unwrap());
        let snap = rx.borrow_and_update().clone();
        assert_eq!(snap.generation(), g0 + 1);
        assert_eq!(snap.head(), 100);
        // A full ring still changes on every push.
        for _ in 0..5 {
            j.push(user("a", Value::Null), at(1.0));
        }
        assert_eq!(j.snapshot().generation(), g0 + 6);
        let old = read(&snap, EVENTS);
        assert_eq!(seqs(&old), [100], "a snapshot never changes");
    }

    #[test]
    fn queries_are_not_journaled() {
        let j = Journal::with_start(3, 100);
        let query = ClusterEvent::Query {
            name: "q".into(),
            ltime: 1,
            payload: Value::Null,
            from: None,
            id: 9,
        };
        assert_eq!(j.push(query.clone(), at(1.0)), None);
        let snap = j.snapshot();
        assert_eq!((snap.len(), snap.generation()), (0, 0));
        j.mirror(
            vec![Entry {
                seq: 5,
                time: 1.0,
                event: query,
            }],
            true,
        );
        assert_eq!(j.snapshot().generation(), 0);
    }

    #[test]
    fn lines_are_flat_json_objects_led_by_their_seq() {
        let j = Journal::with_start(8, 100);
        j.push(
            ClusterEvent::User {
                name: "deploy".into(),
                ltime: 42,
                payload: json!({"v": 2}),
                from: Some(Raiser {
                    node: "n1".into(),
                    child: Some("web".into()),
                }),
            },
            at(1_700_000_000.25),
        );
        j.push(
            ClusterEvent::Member {
                event: "member-join".into(),
                members: vec![json!({"id": "n2"})],
            },
            at(1_700_000_001.0),
        );
        j.push(user("container", json!("x")), at(1_700_000_002.5));
        let events = String::from_utf8(read(&j.snapshot(), EVENTS)).unwrap();
        assert_eq!(
            events,
            concat!(
                r#"{"seq":100,"time":1700000000.25,"type":"user","name":"deploy","ltime":42,"payload":{"v":2},"from":{"node":"n1","child":"web"}}"#,
                "\n",
                r#"{"seq":101,"time":1700000001.0,"type":"member","event":"member-join","members":[{"id":"n2"}]}"#,
                "\n",
                r#"{"seq":102,"time":1700000002.5,"type":"user","name":"container","ltime":7,"payload":"x"}"#,
                "\n",
            )
        );
        // What a child receives parses back to the same entries.
        let sent = j.entries_since(0);
        let wire = serde_json::to_string(&sent).unwrap();
        let back: Vec<Entry> = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, sent);
    }

    #[test]
    fn a_mirror_keeps_the_parents_numbers_and_marks_their_jumps() {
        let parent = filled(16, 100, 3); // 100..=102
        let child = Journal::with_start(16, 9_000);

        // Brand new: the parent's numbers as they come, no marker.
        child.mirror(parent.entries_since(0), true);
        assert_eq!(seqs(&read(&child.snapshot(), EVENTS)), [100, 101, 102]);
        assert_eq!(child.snapshot().head(), 102);

        // Already held lines are skipped; contiguous ones are appended.
        parent.push(user("e", json!(3)), at(2.0));
        child.mirror(parent.entries_since(100), false);
        let snap = child.snapshot();
        assert_eq!(seqs(&read(&snap, EVENTS)), [100, 101, 102, 103]);
        let g = snap.generation();
        child.mirror(parent.entries_since(101), false);
        assert_eq!(child.snapshot().generation(), g, "nothing new, no change");

        // A jump becomes a gap line ending just below the first new seq.
        let restarted = filled(16, 200, 2); // 200, 201
        child.mirror(restarted.entries_since(0), true);
        let snap = child.snapshot();
        let all = lines(&read(&snap, EVENTS));
        assert_eq!(
            all[4],
            json!({"seq": 199, "type": "gap", "first_lost": 104})
        );
        assert_eq!(
            seqs(&read(&snap, EVENTS)),
            [100, 101, 102, 103, 199, 200, 201]
        );
        assert_eq!(snap.head(), 201);
        // Gap lines are not events to hand on.
        let handed: Vec<u64> = snap.entries_since(103).iter().map(|e| e.seq).collect();
        assert_eq!(handed, [200, 201]);
    }

    #[test]
    fn a_gap_at_the_front_of_the_ring_merges_with_the_readers_own() {
        let child = Journal::with_start(3, 9_000);
        child.mirror(filled(8, 100, 1).entries_since(0), true); // 100
        child.mirror(filled(8, 200, 2).entries_since(0), true); // gap 199, 200, 201
        let snap = child.snapshot();
        assert_eq!(seqs(&read(&snap, EVENTS)), [199, 200, 201]);
        let since = lines(&read(&snap, &format!("{EVENTS_SINCE}/100")));
        assert_eq!(
            since[0],
            json!({"seq": 199, "type": "gap", "first_lost": 101})
        );
        let since = lines(&read(&snap, &format!("{EVENTS_SINCE}/50")));
        assert_eq!(
            since[0],
            json!({"seq": 199, "type": "gap", "first_lost": 51})
        );
        assert_eq!(since.len(), 3);
    }

    #[test]
    fn a_mirror_re_bases_when_its_parents_numbers_go_back() {
        let child = Journal::with_start(32, 9_000);
        child.mirror(filled(8, 100, 3).entries_since(0), true); // 100..=102
                                                                // The parent restarted with its clock back: its ring starts at 50.
        let rewound = filled(8, 50, 2); // 50, 51
        child.mirror(rewound.entries_since(0), true);
        let snap = child.snapshot();
        let all = lines(&read(&snap, EVENTS));
        assert_eq!(
            all[3],
            json!({"seq": 103, "type": "gap", "first_lost": null})
        );
        assert_eq!(seqs(&read(&snap, EVENTS)), [100, 101, 102, 103, 104, 105]);
        // New entries of that run follow, at the same offset.
        rewound.push(user("e", json!(52)), at(3.0));
        child.mirror(rewound.entries_since(51), false);
        assert_eq!(child.snapshot().head(), 106);
        // A reconnect to the same run: its backlog holds what we have.
        let g = child.snapshot().generation();
        child.mirror(rewound.entries_since(0), true);
        assert_eq!(child.snapshot().generation(), g, "nothing new");
        // Same numbers, other events: a new run too (its clock went back
        // just as far as its events went on).
        let twin = filled(8, 51, 2); // 51, 52 with other times
        child.mirror(twin.entries_since(0), true);
        assert_eq!(
            seqs(&read(&child.snapshot(), EVENTS))[6..],
            [106, 107, 108, 109]
        );
        // A new run whose backlog is empty is told by its first entry.
        let empty = Journal::with_start(8, 10);
        child.mirror(empty.entries_since(0), true);
        empty.push(user("e", json!(0)), at(4.0));
        child.mirror(empty.entries_since(0), false);
        let all = lines(&read(&child.snapshot(), EVENTS));
        assert_eq!(all[all.len() - 2]["type"], "gap");
        assert_eq!(child.snapshot().head(), 111);
        // Handlers of a child see the events once, gap lines never.
        let handed: Vec<u64> = child
            .snapshot()
            .entries_since(102)
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(handed, [104, 105, 106, 108, 109, 111]);
    }

    #[test]
    fn losses_noticed_outside_the_ring_are_gap_lines_merged_while_nothing_comes_between() {
        let j = Journal::with_start(8, 100);
        j.push(user("a", json!(1)), at(1.0));
        assert!(j.push_gap());
        assert!(!j.push_gap(), "the same loss noticed again");
        j.push(user("b", json!(2)), at(2.0));
        let all = lines(&read(&j.snapshot(), EVENTS));
        assert_eq!(
            all[1],
            json!({"seq": 101, "type": "gap", "first_lost": null})
        );
        assert_eq!(seqs(&read(&j.snapshot(), EVENTS)), [100, 101, 102]);
        // A reader resuming from before the gap sees it; from it, not.
        assert_eq!(
            seqs(&read(&j.snapshot(), &format!("{EVENTS_SINCE}/100"))),
            [101, 102]
        );
        assert_eq!(
            seqs(&read(&j.snapshot(), &format!("{EVENTS_SINCE}/101"))),
            [102]
        );
    }

    #[test]
    fn every_events_since_file_shares_one_rendering_of_the_ring() {
        let j = filled(8, 100, 5);
        let snap = j.snapshot();
        let a = snap.parts_since(101);
        let b = snap.parts_since(50);
        assert!(Arc::ptr_eq(&a.shared, &b.shared));
        assert!(a.head.is_empty());
        assert_eq!(seqs(&b.head), [99], "its own gap line");
        assert_eq!(a.to_vec(), snap.render_since(101));
        assert_eq!(snap.render_all(), snap.parts_since(0).to_vec());
        assert!(snap.parts_since(104).is_empty());
    }
}
