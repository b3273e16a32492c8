//! Room options by pattern: what a kind of room does (who may post, whether joins and leaves
//! are announced, how many members it takes, and the history and presence settings later
//! features read), given as `PATTERN:key=value,...` entries.
//!
//! Entries are tried in the order given; the first whose glob pattern matches the room name
//! wins, whole (keys it does not name take the built-in defaults, not another entry's), and a
//! built-in `*` with every default comes last. A room's options are resolved when a member
//! joins, from configuration that never changes while the node runs, so resolving again later
//! (on leave) gives the same answer. Every node of a cluster must run the same entries: the
//! [`RoomOptions::hash`] of the canonical form is shown on `/healthz` and `/stats`, and
//! gateways flag nodes that disagree.
//!
//! Parsing is strict and fails at start (and in `--check-config`), naming the entry: an
//! unknown key, a bad value or a bad pattern is a configuration error, never ignored.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Most entries one node takes.
pub const MAX_ENTRIES: usize = 64;
/// Longest pattern, in characters (a room name is at most 128).
pub const MAX_PATTERN_LEN: usize = 128;
/// Largest `max_members`.
pub const MAX_MEMBERS: u32 = 10_000_000;
/// Largest `history` (messages kept per room).
pub const MAX_HISTORY: u32 = 100_000;
/// Longest `history_ttl`: 30 days.
pub const MAX_HISTORY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Who may post a room message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Post {
    /// Members only: others get `not_in_room` (the default).
    Members,
    /// Any connection its token allows the room, member or not (the tutorial's behaviour).
    Anyone,
}

/// What one kind of room does. Keys an entry leaves out keep these defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RoomSettings {
    /// Who may post (`post=members|anyone`).
    pub post: Post,
    /// Whether `user_joined`/`user_left` reach the other members (`announce=on|off`); a joiner
    /// or leaver always gets its own.
    pub announce: bool,
    /// Most members a room takes on one node (`max_members=N`); `None`: no limit.
    pub max_members: Option<u32>,
    /// Messages kept per room (`history=N`); `None`: the server's default.
    pub history: Option<u32>,
    /// How long kept messages live (`history_ttl=DURATION`), in milliseconds; `None`: the
    /// server's default.
    #[serde(rename = "history_ttl_ms")]
    pub history_ttl: Option<u64>,
    /// Whether presence is kept (`presence=on|off`); `None`: the server's default.
    pub presence: Option<bool>,
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            post: Post::Members,
            announce: true,
            max_members: None,
            history: None,
            history_ttl: None,
            presence: None,
        }
    }
}

impl RoomSettings {
    /// Reads `key=value,key=value` (possibly empty). Each key at most once.
    fn parse(list: &str) -> Result<Self, String> {
        let mut s = RoomSettings::default();
        let mut seen: Vec<&str> = Vec::new();
        for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            if seen.contains(&key) {
                return Err(format!("key {key:?} given twice"));
            }
            let bad = |expected: &str| format!("{key}={value:?}: expected {expected}");
            match key {
                "post" => {
                    s.post = match value {
                        "members" => Post::Members,
                        "anyone" => Post::Anyone,
                        _ => return Err(bad("members or anyone")),
                    }
                }
                "announce" => s.announce = on_off(value).ok_or_else(|| bad("on or off"))?,
                "presence" => s.presence = Some(on_off(value).ok_or_else(|| bad("on or off"))?),
                "max_members" => {
                    s.max_members = Some(
                        bounded(value, 1, MAX_MEMBERS)
                            .ok_or_else(|| bad(&format!("an integer 1..={MAX_MEMBERS}")))?,
                    )
                }
                "history" => {
                    s.history = Some(
                        bounded(value, 0, MAX_HISTORY)
                            .ok_or_else(|| bad(&format!("an integer 0..={MAX_HISTORY}")))?,
                    )
                }
                "history_ttl" => {
                    let ttl = parse_duration(value)
                        .filter(|d| *d >= Duration::from_secs(1) && *d <= MAX_HISTORY_TTL)
                        .ok_or_else(|| {
                            bad("a duration from 1s to 30d, such as 500ms, 90s, 10m, 12h, 7d")
                        })?;
                    s.history_ttl = Some(ttl.as_millis() as u64);
                }
                _ => {
                    return Err(format!(
                        "unknown key {key:?} (known: post, announce, max_members, history, \
                         history_ttl, presence)"
                    ))
                }
            }
            seen.push(key);
        }
        Ok(s)
    }
}

/// The canonical form: every key, in one order, defaults written out, so two configurations
/// that behave the same read (and hash) the same.
impl fmt::Display for RoomSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let post = match self.post {
            Post::Members => "members",
            Post::Anyone => "anyone",
        };
        let on = |b: bool| if b { "on" } else { "off" };
        write!(f, "post={post},announce={}", on(self.announce))?;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "default".to_owned());
        write!(
            f,
            ",max_members={},history={},history_ttl={},presence={}",
            self.max_members
                .map_or("none".to_owned(), |n| n.to_string()),
            opt(self.history.map(|n| n.to_string())),
            opt(self.history_ttl.map(|ms| format!("{ms}ms"))),
            opt(self.presence.map(|b| on(b).to_owned())),
        )
    }
}

fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

fn bounded(value: &str, min: u32, max: u32) -> Option<u32> {
    let n: u32 = value.parse().ok()?;
    (min..=max).contains(&n).then_some(n)
}

/// `N` followed by `ms`, `s`, `m`, `h` or `d`.
fn parse_duration(value: &str) -> Option<Duration> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = value.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms_per).map(Duration::from_millis)
}

/// One piece of a glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// This exact character.
    Char(char),
    /// `?`: any one character.
    One,
    /// `*`: any run of characters, empty included.
    Run,
}

/// A glob over room names: `*` any run, `?` one character, `\` makes the next one literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    pieces: Vec<Piece>,
}

impl Glob {
    /// Compiles a pattern; 1–128 characters, no whitespace or control characters (as room
    /// names), no dangling `\`.
    pub fn new(source: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("empty pattern".to_owned());
        }
        if source.chars().count() > MAX_PATTERN_LEN {
            return Err(format!("pattern longer than {MAX_PATTERN_LEN} characters"));
        }
        if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "pattern {source:?} has whitespace or control characters (no room name does)"
            ));
        }
        let mut pieces = Vec::with_capacity(source.len());
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            pieces.push(match c {
                '*' if pieces.last() == Some(&Piece::Run) => continue,
                '*' => Piece::Run,
                '?' => Piece::One,
                '\\' => Piece::Char(
                    chars
                        .next()
                        .ok_or_else(|| format!("pattern {source:?} ends in a lone \\"))?,
                ),
                c => Piece::Char(c),
            });
        }
        Ok(Glob {
            source: source.to_owned(),
            pieces,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `name` matches. Linear in the name for each `*` backtrack: at most
    /// O(pattern × name) steps, both bounded (128 characters).
    pub fn matches(&self, name: &str) -> bool {
        let text: Vec<char> = name.chars().collect();
        let (mut p, mut t) = (0, 0);
        // Where the last `*` was, and the text position it currently covers up to.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.pieces.get(p) {
                Some(Piece::Char(c)) if *c == text[t] => (p, t) = (p + 1, t + 1),
                Some(Piece::One) => (p, t) = (p + 1, t + 1),
                Some(Piece::Run) => {
                    star = Some((p, t));
                    p += 1;
                }
                _ => match star {
                    // Let the last `*` take one more character and try again.
                    Some((sp, st)) => {
                        star = Some((sp, st + 1));
                        (p, t) = (sp + 1, st + 1);
                    }
                    None => return false,
                },
            }
        }
        self.pieces[p..].iter().all(|piece| *piece == Piece::Run)
    }
}

/// One `PATTERN:key=value,...` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRule {
    /// Which rooms it applies to.
    pub pattern: Glob,
    /// What they do.
    pub settings: RoomSettings,
}

impl RoomRule {
    /// Parses an entry. The pattern ends at the last `:` (room names may contain `:`; values
    /// never do); what follows may be empty (every default).
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        let fail = |why: String| format!("room options entry {entry:?}: {why}");
        let (pattern, list) = entry
            .rsplit_once(':')
            .ok_or_else(|| fail("expected PATTERN:key=value,key=value".to_owned()))?;
        Ok(RoomRule {
            pattern: Glob::new(pattern).map_err(fail)?,
            settings: RoomSettings::parse(list).map_err(fail)?,
        })
    }
}

impl fmt::Display for RoomRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pattern.as_str(), self.settings)
    }
}

/// The clap parser of one `--room-options` entry.
pub fn parse_entry(entry: &str) -> Result<RoomRule, String> {
    RoomRule::parse(entry)
}

/// A node's room options: its entries in order, then the built-in `*` default.
#[derive(Debug, Clone)]
pub struct RoomOptions {
    rules: Vec<RoomRule>,
    hash: String,
}

impl RoomOptions {
    /// Checks the entry count and appends the default.
    pub fn new(mut rules: Vec<RoomRule>) -> Result<Self, String> {
        if rules.len() > MAX_ENTRIES {
            return Err(format!(
                "{} room options entries; at most {MAX_ENTRIES}",
                rules.len()
            ));
        }
        rules.push(RoomRule {
            pattern: Glob::new("*").expect("`*` is a valid pattern"),
            settings: RoomSettings::default(),
        });
        let hash = format!("{:016x}", fnv1a(rules.iter().map(|r| r.to_string())));
        Ok(RoomOptions { rules, hash })
    }

    /// The first rule whose pattern matches `room` (the default when no entry does).
    pub fn resolve(&self, room: &str) -> &RoomRule {
        self.rules
            .iter()
            .find(|r| r.pattern.matches(room))
            .unwrap_or_else(|| self.default_rule())
    }

    fn default_rule(&self) -> &RoomRule {
        // `new` always pushes it.
        &self.rules[self.rules.len() - 1]
    }

    /// Every rule, the default last.
    pub fn rules(&self) -> &[RoomRule] {
        &self.rules
    }

    /// A hash of the canonical form (16 hex digits); equal on nodes with equivalent entries.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

impl Default for RoomOptions {
    fn default() -> Self {
        RoomOptions::new(Vec::new()).expect("no entries is within the bound")
    }
}

/// FNV-1a over the lines (each followed by `\n`): stable across builds and platforms, unlike
/// the standard library's hasher.
fn fnv1a(lines: impl Iterator<Item = String>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(entries: &[&str]) -> RoomOptions {
        RoomOptions::new(entries.iter().map(|e| parse_entry(e).unwrap()).collect()).unwrap()
    }

    #[test]
    fn globs_match_runs_single_characters_and_escapes() {
        let g = |p: &str| Glob::new(p).unwrap();
        assert!(g("*").matches("anything:at all"));
        assert!(g("support:*").matches("support:"));
        assert!(g("support:*").matches("support:42"));
        assert!(!g("support:*").matches("sales:42"));
        assert!(g("live-?").matches("live-1"));
        assert!(!g("live-?").matches("live-12"));
        assert!(g("a*b*c").matches("aXXbYYc"));
        assert!(g("a*b*c").matches("abc"));
        assert!(!g("a*b*c").matches("aXXbYY"));
        assert!(g("*.vip").matches("x.y.vip"));
        assert!(g(r"what\?").matches("what?"));
        assert!(!g(r"what\?").matches("whatX"));
        assert!(g(r"\*").matches("*"));
        assert!(!g(r"\*").matches("x"));
        assert!(g("ü*").matches("über"));
        assert!(g("**x").matches("x"));
        assert!(!g("exact").matches("exactly"));
    }

    #[test]
    fn a_worst_case_pattern_stays_bounded() {
        let p = format!("{}b", "*a".repeat(63));
        let g = Glob::new(&p).unwrap();
        assert!(!g.matches(&"a".repeat(128)));
    }

    #[test]
    fn the_first_match_wins_whole_and_the_default_comes_last() {
        let o = opts(&[
            "vip:*:max_members=2",
            "*:*:announce=off",
            "support:*:post=anyone",
        ]);
        assert_eq!(o.resolve("vip:1").settings.max_members, Some(2));
        // The first match wins whole: vip:1 keeps announce on though `*:*` turns it off.
        assert!(o.resolve("vip:1").settings.announce);
        assert!(!o.resolve("support:1").settings.announce);
        assert_eq!(o.resolve("support:1").settings.post, Post::Members);
        assert_eq!(o.resolve("lobby").pattern.as_str(), "*");
        assert_eq!(o.resolve("lobby").settings, RoomSettings::default());
    }

    #[test]
    fn every_key_parses_both_ways() {
        let s = parse_entry(
            "r:post=anyone,announce=off,max_members=5,history=100,history_ttl=10m,presence=off",
        )
        .unwrap()
        .settings;
        assert_eq!(s.post, Post::Anyone);
        assert!(!s.announce);
        assert_eq!(s.max_members, Some(5));
        assert_eq!(s.history, Some(100));
        assert_eq!(s.history_ttl, Some(600_000));
        assert_eq!(s.presence, Some(false));
        let s = parse_entry("r:post=members,announce=on,presence=on,history=0,history_ttl=1s")
            .unwrap()
            .settings;
        assert_eq!(s.post, Post::Members);
        assert!(s.announce);
        assert_eq!(s.presence, Some(true));
        assert_eq!(s.history, Some(0));
        assert_eq!(s.history_ttl, Some(1000));
        assert_eq!(parse_entry("r:").unwrap().settings, RoomSettings::default());
        assert_eq!(
            parse_entry("a:b:c:announce=off").unwrap().pattern.as_str(),
            "a:b:c"
        );
    }

    #[test]
    fn bad_entries_name_the_entry_and_the_fault() {
        for (entry, says) in [
            ("no-colon", "PATTERN:key=value"),
            (":announce=off", "empty pattern"),
            ("r:colour=red", "unknown key \"colour\""),
            ("r:announce", "not key=value"),
            ("r:announce=maybe", "on or off"),
            ("r:post=everyone", "members or anyone"),
            ("r:max_members=0", "1..=10000000"),
            ("r:max_members=-1", "1..=10000000"),
            ("r:history=100001", "0..=100000"),
            ("r:history_ttl=10", "duration"),
            ("r:history_ttl=31d", "duration"),
            ("r:history_ttl=500ms", "duration"),
            ("r:history_ttl=99999999999999999999d", "duration"),
            ("r:presence=1", "on or off"),
            ("r:announce=on,announce=off", "given twice"),
            ("a b:announce=off", "whitespace"),
            (r"x\:announce=off", "lone"),
        ] {
            let err = parse_entry(entry).unwrap_err();
            assert!(err.contains(&format!("{entry:?}")), "{entry}: {err}");
            assert!(err.contains(says), "{entry}: {err}");
        }
        let long = format!("{}:announce=off", "x".repeat(129));
        assert!(parse_entry(&long).unwrap_err().contains("longer than 128"));
        let many: Vec<RoomRule> = (0..=MAX_ENTRIES)
            .map(|i| parse_entry(&format!("r{i}:")).unwrap())
            .collect();
        assert!(RoomOptions::new(many).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn the_hash_follows_behaviour_not_spelling() {
        let a = opts(&["support:*:announce=off"]);
        let b = opts(&["support:*: announce=off ,post=members"]);
        let c = opts(&["support:*:announce=on"]);
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_ne!(a.hash(), RoomOptions::default().hash());
        assert_eq!(a.hash().len(), 16);
        // Order is behaviour: first match wins.
        let d = opts(&["a*:announce=off", "ab:max_members=2"]);
        let e = opts(&["ab:max_members=2", "a*:announce=off"]);
        assert_ne!(d.hash(), e.hash());
        assert_eq!(
            RoomOptions::default().rules()[0].to_string(),
            "*:post=members,announce=on,max_members=none,history=default,history_ttl=default,presence=default"
        );
    }
}
