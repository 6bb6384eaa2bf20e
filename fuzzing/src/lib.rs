//! Bad-input campaigns for the parsers users feed lossbench (docs/benchmarks.md, "Bad inputs
//! tried"). A campaign takes valid seed inputs, derives mutated ones from them with a seeded
//! [`Mutator`] (truncations, bit flips, wrong types, huge numbers, spliced and repeated chunks),
//! hands each to the parser under test and counts what happened: accepted, refused with an
//! error, or a panic (a defect). It also records the slowest case and the peak heap in use, so a
//! test can require that no input hangs a parser or makes it allocate without bound.
//!
//! A test binary installs [`PeakAlloc`] as its global allocator for the memory figure. The
//! number of cases per campaign is `LOSSBENCH_FUZZ_CASES` (10,000 by default; `make fuzz` asks
//! for more); with `LOSSBENCH_FUZZ_REPORT=FILE` each campaign appends its report there as a
//! JSON line.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Cases per campaign unless `LOSSBENCH_FUZZ_CASES` says otherwise.
pub const DEFAULT_CASES: usize = 10_000;
/// No single input may take longer than this (a parser that loops on bad input fails here).
pub const MAX_CASE: Duration = Duration::from_secs(2);
/// Heap that the parser may hold at once for one input (every seed input is under 1 MB).
pub const MAX_HEAP: usize = 64 << 20;

/// The global allocator of a fuzz test binary: the system allocator, counting the bytes that
/// the parser under test holds (allocations on the thread running a case, while it runs: other
/// tests of the binary do not count) and their peak.
pub struct PeakAlloc;

static IN_USE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Whether this thread is running a case.
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

fn tracked() -> bool {
    TRACKED.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && tracked() {
            let size = layout.size() as isize;
            let now = IN_USE.fetch_add(size, Ordering::Relaxed) + size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        if tracked() {
            IN_USE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }
}

/// Mutations of valid inputs, reproducible from a seed.
pub struct Mutator {
    rng: ChaCha8Rng,
}

/// Byte strings that often break parsers when spliced in: huge and negative numbers, special
/// floats, wrong JSON/TOML types, control bytes.
const TOKENS: &[&[u8]] = &[
    b"99999999999999999999999",
    b"-1",
    b"4294967295",
    b"18446744073709551616",
    b"1e308",
    b"NaN",
    b"-inf",
    b"null",
    b"[]",
    b"{}",
    b"\"\"",
    b"true",
    b"\0",
    b"\xff\xfe",
    b"\n",
    b"\"\\u0000\"",
];

/// Bytes whose flips hit the boundaries of integer fields.
const INTERESTING: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x10, 0x20];

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A random index below `n` (0 for n = 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.random_range(0..n)
        }
    }

    /// One to four stacked mutations of `input`; with `tail` > 0, positions fall in the last
    /// `tail` bytes half of the time (where formats such as Parquet keep their metadata).
    pub fn mutate(&mut self, input: &[u8], tail: usize) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = if tail > 0 && self.rng.random_bool(0.5) && out.len() > tail {
                out.len() - tail + self.below(tail)
            } else {
                self.below(out.len())
            };
            match self.below(9) {
                0 => out.truncate(at),
                1 if !out.is_empty() => {
                    let (i, bit) = (at.min(out.len() - 1), self.below(8));
                    out[i] ^= 1 << bit;
                }
                2 if !out.is_empty() => {
                    let (i, v) = (
                        at.min(out.len() - 1),
                        INTERESTING[self.below(INTERESTING.len())],
                    );
                    out[i] = v;
                }
                3 => {
                    // Overwrite up to 8 bytes with 0xff or 0x00: huge or zero sizes and offsets.
                    let fill = if self.rng.random_bool(0.5) {
                        0xff
                    } else {
                        0x00
                    };
                    let end = (at + 1 + self.below(8)).min(out.len());
                    out[at.min(end)..end].fill(fill);
                }
                4 => {
                    let token = TOKENS[self.below(TOKENS.len())];
                    let end = (at + self.below(token.len() + 1)).min(out.len());
                    out.splice(at.min(end)..end, token.iter().copied());
                }
                5 => {
                    let junk: Vec<u8> =
                        (0..1 + self.below(64)).map(|_| self.rng.random()).collect();
                    out.splice(at..at, junk);
                }
                6 if !out.is_empty() => {
                    // Repeat a chunk: duplicated records, fields, members.
                    let start = self.below(out.len());
                    let end = (start + 1 + self.below(256)).min(out.len());
                    let chunk = out[start..end].to_vec();
                    out.splice(at..at, chunk);
                }
                7 if !out.is_empty() => {
                    let end = (at + 1 + self.below(256)).min(out.len());
                    out.drain(at.min(end)..end);
                }
                _ => {
                    let junk: Vec<u8> = (0..self.below(16)).map(|_| self.rng.random()).collect();
                    out.extend(junk);
                }
            }
        }
        out
    }

    /// A random choice among `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What the parser under test made of one input.
pub enum Outcome {
    Accepted,
    /// Refused with this message.
    Refused(String),
}

/// A campaign's counts.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub cases: usize,
    pub accepted: usize,
    pub refused: usize,
    /// Panic messages with the case number that caused them (at most 10 kept).
    pub panics: Vec<String>,
    pub panic_count: usize,
    /// Refusals whose message did not satisfy the campaign's check (at most 10 kept).
    pub unnamed: Vec<String>,
    pub slowest: Duration,
    pub peak_heap: usize,
    pub seconds: f64,
}

impl Report {
    /// Zero panics, every refusal's message as required, no case over [`MAX_CASE`], the heap
    /// within [`MAX_HEAP`]; and at least one input refused (the mutations reached the parser).
    pub fn assert_clean(&self) {
        assert_eq!(
            self.panic_count, 0,
            "{}: {} panic(s), first ones: {:#?}",
            self.name, self.panic_count, self.panics
        );
        assert!(
            self.unnamed.is_empty(),
            "{}: refusals that do not name the input: {:#?}",
            self.name,
            self.unnamed
        );
        assert!(
            self.slowest <= MAX_CASE,
            "{}: a case took {:?}",
            self.name,
            self.slowest
        );
        assert!(
            self.peak_heap <= MAX_HEAP,
            "{}: {} MiB of heap at the peak",
            self.name,
            self.peak_heap >> 20
        );
        assert!(
            self.refused > 0,
            "{}: no mutated input was refused: the mutations do not reach the parser",
            self.name
        );
    }
}

/// The number of cases a campaign runs.
pub fn cases() -> usize {
    std::env::var("LOSSBENCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

thread_local! {
    /// The message of a panic caught inside a campaign on this thread.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
    static IN_CAMPAIGN: RefCell<bool> = const { RefCell::new(false) };
}

/// Panics inside a campaign are recorded, not printed; elsewhere the default hook runs.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CAMPAIGN.with(|c| *c.borrow()) {
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                CAUGHT.with(|c| *c.borrow_mut() = Some(format!("{info}{at}")));
            } else {
                default(info);
            }
        }));
    });
}

/// Campaigns measure the shared heap: one at a time per process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `cases` inputs through `parse`: case i gets `make(i, mutator)` (usually a mutation of a
/// seed). `named` checks each refusal's message (e.g. that it names the file).
pub fn campaign(
    name: &str,
    cases: usize,
    seed: u64,
    mut make: impl FnMut(usize, &mut Mutator) -> Vec<u8>,
    mut parse: impl FnMut(usize, &[u8]) -> Outcome,
    named: impl Fn(&str) -> bool,
) -> Report {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    install_hook();
    let mut mutator = Mutator::new(seed);
    let mut report = Report {
        name: name.to_string(),
        cases,
        accepted: 0,
        refused: 0,
        panics: Vec::new(),
        panic_count: 0,
        unnamed: Vec::new(),
        slowest: Duration::ZERO,
        peak_heap: 0,
        seconds: 0.0,
    };
    let started = Instant::now();
    for i in 0..cases {
        let input = make(i, &mut mutator);
        IN_CAMPAIGN.with(|c| *c.borrow_mut() = true);
        IN_USE.store(0, Ordering::Relaxed);
        TRACKED.with(|t| t.set(true));
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| parse(i, &input)));
        report.slowest = report.slowest.max(t.elapsed());
        TRACKED.with(|t| t.set(false));
        report.peak_heap = report
            .peak_heap
            .max(PEAK.swap(0, Ordering::Relaxed).max(0) as usize);
        IN_CAMPAIGN.with(|c| *c.borrow_mut() = false);
        match result {
            Ok(Outcome::Accepted) => report.accepted += 1,
            Ok(Outcome::Refused(message)) => {
                report.refused += 1;
                if !named(&message) && report.unnamed.len() < 10 {
                    report.unnamed.push(format!("case {i}: {message}"));
                }
            }
            Err(_) => {
                report.panic_count += 1;
                if report.panics.len() < 10 {
                    let message = CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or_default();
                    report
                        .panics
                        .push(format!("case {i} ({} bytes): {message}", input.len()));
                }
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "campaign": report.name, "cases": report.cases, "accepted": report.accepted, "refused": report.refused,
        "panics": report.panic_count, "slowest_ms": report.slowest.as_secs_f64() * 1e3,
        "peak_heap_mib": report.peak_heap as f64 / 1048576.0, "seconds": report.seconds,
    });
    println!("{line}");
    if let Ok(path) = std::env::var("LOSSBENCH_FUZZ_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("LOSSBENCH_FUZZ_REPORT is writable");
        writeln!(f, "{line}").expect("LOSSBENCH_FUZZ_REPORT is writable");
    }
    report
}

/// An [`Outcome`] from a parser's result.
pub fn outcome<T, E: std::fmt::Display>(result: Result<T, E>) -> Outcome {
    match result {
        Ok(_) => Outcome::Accepted,
        Err(e) => Outcome::Refused(format!("{e:#}")),
    }
}
