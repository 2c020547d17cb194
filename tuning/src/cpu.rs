//! CPU lists in taskset/cpuset syntax, the CPUs this machine has and this
//! process may use, pinning the current thread, and hyper-thread siblings.
//!
//! A [`CpuList`] is a set of CPU ids. It parses what `taskset -c`, cgroup
//! cpusets and `/sys/devices/system/cpu/online` use (`0-39`, `0,2,4-7`,
//! `1-15:2`) and prints the kernel's compact form (`0-3,8,10-11`), so a list
//! printed by turbo-dex can be compared with what `/sys` and `taskset -p`
//! print.

use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;

/// CPU ids must be below this. It is the largest `CONFIG_NR_CPUS` a Linux
/// kernel can be built with, and it bounds the memory a parsed list takes
/// (a `0-4000000000` typo is an error, not a 500 MB bitmap).
pub const CPU_ID_LIMIT: usize = 8192;

const WORD_BITS: usize = 64;

/// A set of CPU ids, each below [`CPU_ID_LIMIT`], iterated in ascending order.
///
/// Parse one with [`str::parse`]; print it with `{}` (the kernel's compact
/// form). `Default` is the empty list.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CpuList {
    /// Bit `i % 64` of word `i / 64` is CPU `i`. No trailing zero words, so
    /// derived equality is set equality.
    words: Vec<u64>,
}

impl CpuList {
    /// The empty list.
    pub const fn new() -> Self {
        CpuList { words: Vec::new() }
    }

    /// A list holding exactly `cpus`. Fails on the first id at or above
    /// [`CPU_ID_LIMIT`].
    pub fn from_cpus<I: IntoIterator<Item = usize>>(cpus: I) -> Result<Self, ParseCpuListError> {
        let mut list = CpuList::new();
        for cpu in cpus {
            list.insert(cpu)?;
        }
        Ok(list)
    }

    /// Adds `cpu`. Fails when it is at or above [`CPU_ID_LIMIT`].
    pub fn insert(&mut self, cpu: usize) -> Result<(), ParseCpuListError> {
        if cpu >= CPU_ID_LIMIT {
            return Err(ParseCpuListError {
                item: cpu.to_string(),
                kind: ParseErrorKind::TooLarge { cpu: cpu as u64 },
            });
        }
        let word = cpu / WORD_BITS;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (cpu % WORD_BITS);
        Ok(())
    }

    /// Removes `cpu` if present.
    pub fn remove(&mut self, cpu: usize) {
        if let Some(word) = self.words.get_mut(cpu / WORD_BITS) {
            *word &= !(1 << (cpu % WORD_BITS));
            self.trim();
        }
    }

    /// Whether `cpu` is in the list.
    pub fn contains(&self, cpu: usize) -> bool {
        self.words
            .get(cpu / WORD_BITS)
            .is_some_and(|word| word & (1 << (cpu % WORD_BITS)) != 0)
    }

    /// How many CPUs the list holds.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the list holds no CPU.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The lowest CPU, if any.
    pub fn first(&self) -> Option<usize> {
        self.iter().next()
    }

    /// The highest CPU, if any.
    pub fn last(&self) -> Option<usize> {
        let (index, word) = self.words.iter().enumerate().next_back()?;
        Some(index * WORD_BITS + (WORD_BITS - 1 - word.leading_zeros() as usize))
    }

    /// The `index`-th CPU in ascending order: how a thread numbered `index`
    /// finds the core it pins to.
    pub fn nth(&self, index: usize) -> Option<usize> {
        self.iter().nth(index)
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            words: &self.words,
            word_index: 0,
            current: self.words.first().copied().unwrap_or(0),
        }
    }

    /// The CPUs in ascending order, collected.
    pub fn to_vec(&self) -> Vec<usize> {
        self.iter().collect()
    }

    /// CPUs in `self` or `other`.
    pub fn union(&self, other: &CpuList) -> CpuList {
        let n = self.words.len().max(other.words.len());
        let words = (0..n)
            .map(|i| self.word(i) | other.word(i))
            .collect::<Vec<_>>();
        CpuList::from_words(words)
    }

    /// CPUs in both `self` and `other`.
    pub fn intersection(&self, other: &CpuList) -> CpuList {
        let n = self.words.len().min(other.words.len());
        let words = (0..n).map(|i| self.word(i) & other.word(i)).collect();
        CpuList::from_words(words)
    }

    /// CPUs in `self` but not in `other`: for example the allowed CPUs minus
    /// the engine cores, where the admin thread and NIC interrupts belong.
    pub fn difference(&self, other: &CpuList) -> CpuList {
        let words = (0..self.words.len())
            .map(|i| self.word(i) & !other.word(i))
            .collect();
        CpuList::from_words(words)
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuList) -> bool {
        self.difference(other).is_empty()
    }

    /// Checks that every CPU in the list exists (is in `online`) and may be
    /// used by this process (is in `allowed`). The error names the offending
    /// CPUs and lists the ones that are available.
    pub fn check_available(
        &self,
        online: &CpuList,
        allowed: &CpuList,
    ) -> Result<(), CpuUnavailableError> {
        if self.is_empty() {
            return Err(CpuUnavailableError {
                missing: CpuList::new(),
                not_allowed: CpuList::new(),
                online: online.clone(),
                allowed: allowed.clone(),
            });
        }
        let missing = self.difference(online);
        let not_allowed = self.intersection(online).difference(allowed);
        if missing.is_empty() && not_allowed.is_empty() {
            Ok(())
        } else {
            Err(CpuUnavailableError {
                missing,
                not_allowed,
                online: online.clone(),
                allowed: allowed.clone(),
            })
        }
    }

    /// [`CpuList::check_available`] against this machine: the online CPUs
    /// under `/sys` and this process's affinity mask.
    pub fn check_on_this_host(&self) -> Result<(), CpuUnavailableError> {
        // A machine whose /sys cannot be read still has the CPUs the
        // affinity mask names; checking against that is better than nothing.
        let allowed = allowed_cpus().unwrap_or_default();
        let online = online_cpus(Path::new(crate::SYS_ROOT)).unwrap_or_else(|_| allowed.clone());
        self.check_available(&online, &allowed)
    }

    fn word(&self, index: usize) -> u64 {
        self.words.get(index).copied().unwrap_or(0)
    }

    fn from_words(words: Vec<u64>) -> CpuList {
        let mut list = CpuList { words };
        list.trim();
        list
    }

    fn trim(&mut self) {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }

    /// Contiguous runs `(first, last)` in ascending order.
    fn runs(&self) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for cpu in self.iter() {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == cpu => *last = cpu,
                _ => runs.push((cpu, cpu)),
            }
        }
        runs
    }

    /// Parses the contents of a `/sys` cpulist file, where an empty file (or
    /// one holding only a newline) is the empty list rather than an error.
    pub fn parse_sysfs(text: &str) -> Result<CpuList, ParseCpuListError> {
        if text.trim().is_empty() {
            Ok(CpuList::new())
        } else {
            text.parse()
        }
    }
}

/// Ascending iterator over a [`CpuList`].
pub struct Iter<'a> {
    words: &'a [u64],
    word_index: usize,
    /// The not yet returned bits of `words[word_index]`.
    current: u64,
}

impl Iterator for Iter<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        loop {
            if self.current != 0 {
                let bit = self.current.trailing_zeros() as usize;
                self.current &= self.current - 1;
                return Some(self.word_index * WORD_BITS + bit);
            }
            self.word_index += 1;
            self.current = *self.words.get(self.word_index)?;
        }
    }
}

impl<'a> IntoIterator for &'a CpuList {
    type Item = usize;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The kernel's compact form: ascending, runs of two or more as `a-b`,
/// separated by commas, no spaces. Strides are never printed, so each set
/// has exactly one printed form. The empty list prints as nothing.
impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (first, last)) in self.runs().into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuList({self})")
    }
}

/// Parses taskset syntax: comma-separated items, each `N`, `A-B` (both
/// included) or `A-B:S` (every S-th CPU from A up to B). Whitespace around
/// items and around `-` and `:` is ignored. Duplicates and overlaps are
/// fine. An empty list is an error: a thread cannot run on no CPU.
impl FromStr for CpuList {
    type Err = ParseCpuListError;

    fn from_str(text: &str) -> Result<CpuList, ParseCpuListError> {
        if text.trim().is_empty() {
            return Err(ParseCpuListError {
                item: String::new(),
                kind: ParseErrorKind::Empty,
            });
        }
        let mut list = CpuList::new();
        for raw_item in text.split(',') {
            let item = raw_item.trim();
            let error = |kind| ParseCpuListError {
                item: item.to_string(),
                kind,
            };
            if item.is_empty() {
                return Err(error(ParseErrorKind::EmptyItem));
            }
            let (range, stride) = match item.split_once(':') {
                Some((range, stride)) => (range, Some(stride)),
                None => (item, None),
            };
            let (start, end) = match range.split_once('-') {
                Some((start, end)) => (parse_cpu(start, item)?, parse_cpu(end, item)?),
                None => {
                    if stride.is_some() {
                        return Err(error(ParseErrorKind::StrideWithoutRange));
                    }
                    let cpu = parse_cpu(range, item)?;
                    (cpu, cpu)
                }
            };
            if end < start {
                return Err(error(ParseErrorKind::Reversed { start, end }));
            }
            let stride = match stride {
                Some(stride) => {
                    let stride = parse_number(stride, item)?;
                    if stride == 0 {
                        return Err(error(ParseErrorKind::ZeroStride));
                    }
                    stride
                }
                None => 1,
            };
            // Bounded by CPU_ID_LIMIT: parse_cpu rejected larger ends.
            for cpu in (start..=end).step_by(usize::try_from(stride).unwrap_or(usize::MAX)) {
                list.insert(cpu)?;
            }
        }
        Ok(list)
    }
}

fn parse_number(part: &str, item: &str) -> Result<u64, ParseCpuListError> {
    let part = part.trim();
    let error = |kind| ParseCpuListError {
        item: item.to_string(),
        kind,
    };
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(ParseErrorKind::NotANumber {
            part: part.to_string(),
        }));
    }
    // All digits: the only way to fail is overflow, which is "too large".
    part.parse::<u64>()
        .map_err(|_| error(ParseErrorKind::TooLarge { cpu: u64::MAX }))
}

fn parse_cpu(part: &str, item: &str) -> Result<usize, ParseCpuListError> {
    let cpu = parse_number(part, item)?;
    if cpu >= CPU_ID_LIMIT as u64 {
        return Err(ParseCpuListError {
            item: item.to_string(),
            kind: ParseErrorKind::TooLarge { cpu },
        });
    }
    Ok(cpu as usize)
}

/// Why a CPU list did not parse; Display names the bad item and shows the
/// accepted syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseCpuListError {
    /// The comma-separated item that is wrong, trimmed (empty for an empty list).
    pub item: String,
    /// What is wrong with it.
    pub kind: ParseErrorKind,
}

/// What is wrong with a CPU list item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The whole list is empty.
    Empty,
    /// Two commas in a row, or a leading or trailing comma.
    EmptyItem,
    /// A part that should be a decimal CPU number or stride is not.
    NotANumber {
        /// The offending part.
        part: String,
    },
    /// A range whose end is below its start.
    Reversed {
        /// The range's first CPU.
        start: usize,
        /// The range's last CPU.
        end: usize,
    },
    /// A stride of zero.
    ZeroStride,
    /// `N:S` with no range: a stride needs `A-B:S`.
    StrideWithoutRange,
    /// A CPU id at or above [`CPU_ID_LIMIT`] (`u64::MAX` when it overflowed).
    TooLarge {
        /// The id as written.
        cpu: u64,
    },
}

const SYNTAX_HINT: &str = "write CPUs like 0-3,8,10-15:2";

impl fmt::Display for ParseCpuListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let item = &self.item;
        match &self.kind {
            ParseErrorKind::Empty => write!(f, "the CPU list is empty; {SYNTAX_HINT}"),
            ParseErrorKind::EmptyItem => write!(
                f,
                "the CPU list has an empty item (two commas in a row, or a comma at an end); {SYNTAX_HINT}"
            ),
            ParseErrorKind::NotANumber { part } => write!(
                f,
                "bad CPU list item {item:?}: {part:?} is not a CPU number; {SYNTAX_HINT}"
            ),
            ParseErrorKind::Reversed { start, end } => write!(
                f,
                "bad CPU list item {item:?}: the range ends ({end}) below its start ({start}); write it as {end}-{start}"
            ),
            ParseErrorKind::ZeroStride => write!(
                f,
                "bad CPU list item {item:?}: the stride after ':' must be at least 1"
            ),
            ParseErrorKind::StrideWithoutRange => write!(
                f,
                "bad CPU list item {item:?}: a stride needs a range, like 0-15:2"
            ),
            ParseErrorKind::TooLarge { cpu } if *cpu == u64::MAX => write!(
                f,
                "bad CPU list item {item:?}: the number is too large (CPU ids are below {CPU_ID_LIMIT})"
            ),
            ParseErrorKind::TooLarge { cpu } => write!(
                f,
                "bad CPU list item {item:?}: CPU {cpu} is too large (CPU ids are below {CPU_ID_LIMIT})"
            ),
        }
    }
}

impl std::error::Error for ParseCpuListError {}

/// Some requested CPUs do not exist or this process may not run on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuUnavailableError {
    /// Requested CPUs that are not online (do not exist, or are offline).
    pub missing: CpuList,
    /// Requested CPUs that exist but are outside the affinity mask.
    pub not_allowed: CpuList,
    /// The online CPUs it was checked against.
    pub online: CpuList,
    /// The affinity mask it was checked against.
    pub allowed: CpuList,
}

fn cores_word(list: &CpuList) -> &'static str {
    if list.len() == 1 { "core" } else { "cores" }
}

impl fmt::Display for CpuUnavailableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.missing.is_empty() && self.not_allowed.is_empty() {
            return write!(
                f,
                "no cores were given; this machine has cores {}",
                self.online
            );
        }
        if !self.missing.is_empty() {
            let (word, verb) = if self.missing.len() == 1 {
                ("core", "does")
            } else {
                ("cores", "do")
            };
            write!(
                f,
                "{word} {} {verb} not exist; this machine has cores {}",
                self.missing, self.online
            )?;
            if !self.not_allowed.is_empty() {
                f.write_str("; and ")?;
            }
        }
        if !self.not_allowed.is_empty() {
            let usable = self.online.intersection(&self.allowed);
            write!(
                f,
                "{} {} not allowed for this process (its affinity mask is {}; taskset, numactl, \
                 a cgroup cpuset or docker --cpuset-cpus limits it): use cores within {usable}",
                cores_word(&self.not_allowed),
                self.not_allowed,
                self.allowed,
            )?;
            f.write_str(if self.not_allowed.len() == 1 {
                " (it is"
            } else {
                " (they are"
            })?;
            f.write_str(" online but outside the mask)")?;
        }
        Ok(())
    }
}

impl std::error::Error for CpuUnavailableError {}

/// The online CPUs, from `<sys_root>/devices/system/cpu/online` (`sys_root`
/// is `/sys` on a real machine, a fake tree in tests).
pub fn online_cpus(sys_root: &Path) -> io::Result<CpuList> {
    let path = sys_root.join("devices/system/cpu/online");
    let text = std::fs::read_to_string(&path)?;
    CpuList::parse_sysfs(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Words in the largest affinity mask we pass to the kernel: [`CPU_ID_LIMIT`] bits.
const MASK_WORDS_MAX: usize = CPU_ID_LIMIT / WORD_BITS;

/// The CPUs this process may run on: the affinity mask of its main thread
/// (`sched_getaffinity(getpid())`), which taskset, numactl, cgroup cpusets
/// and `docker --cpuset-cpus` restrict. Read it before pinning the main
/// thread, or it reports that one CPU.
pub fn allowed_cpus() -> io::Result<CpuList> {
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() };
    affinity_of(pid)
}

/// The CPUs the calling thread may run on (`sched_getaffinity(0)`): after
/// [`pin_current_thread`] this is that one CPU.
pub fn current_thread_affinity() -> io::Result<CpuList> {
    affinity_of(0)
}

fn affinity_of(pid: libc::pid_t) -> io::Result<CpuList> {
    // Start at glibc's cpu_set_t (1024 CPUs); the kernel answers EINVAL when
    // its own mask is larger, so grow up to CPU_ID_LIMIT.
    let mut words = std::mem::size_of::<libc::cpu_set_t>() / 8;
    loop {
        let mut mask = vec![0u64; words];
        // SAFETY: mask is a writable buffer of exactly words * 8 bytes, the
        // size passed; the raw syscall writes at most that many bytes.
        let copied = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                pid,
                words * 8,
                mask.as_mut_ptr(),
            )
        };
        if copied >= 0 {
            return Ok(CpuList::from_words(mask));
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EINVAL) && words < MASK_WORDS_MAX {
            words *= 2;
            continue;
        }
        return Err(error);
    }
}

/// Pinning the current thread failed.
#[derive(Debug)]
pub struct PinError {
    /// The CPUs asked for.
    pub cpus: CpuList,
    /// The affinity mask of the process at the time, when it could be read.
    pub allowed: Option<CpuList>,
    /// What sched_setaffinity said.
    pub source: io::Error,
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot pin this thread to {} {}: {}",
            cores_word(&self.cpus),
            self.cpus,
            self.source
        )?;
        match &self.allowed {
            Some(allowed) => write!(
                f,
                "; this process may run only on cores {allowed} (taskset, a cgroup cpuset or \
                 docker --cpuset-cpus limits it)"
            ),
            None => Ok(()),
        }
    }
}

impl std::error::Error for PinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Pins the calling thread to `cpu`: from now on the scheduler runs it only
/// there. Engine and load generator threads call this first thing, so their
/// memory is first touched on that core's NUMA node.
pub fn pin_current_thread(cpu: usize) -> Result<(), PinError> {
    // core_affinity does the pinning where it can: its one cpu_set_t holds
    // CPUs below CPU_SETSIZE (it panics beyond), and it only answers yes or
    // no, so on failure the direct call below runs to find out why, and it
    // covers larger CPU ids.
    if cpu < libc::CPU_SETSIZE as usize
        && core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
    {
        return Ok(());
    }
    let mut cpus = CpuList::new();
    if let Err(e) = cpus.insert(cpu) {
        return Err(PinError {
            cpus: CpuList::new(),
            allowed: allowed_cpus().ok(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        });
    }
    set_current_thread_affinity(&cpus)
}

/// Restricts the calling thread to `cpus`: how a thread that must stay off
/// the engine cores (the admin thread) moves to the other ones.
pub fn set_current_thread_affinity(cpus: &CpuList) -> Result<(), PinError> {
    let fail = |source| PinError {
        cpus: cpus.clone(),
        allowed: allowed_cpus().ok(),
        source,
    };
    if cpus.is_empty() {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no CPU given",
        )));
    }
    // At least a cpu_set_t's worth: glibc-sized masks are what every kernel accepts.
    let words = cpus
        .words
        .len()
        .max(std::mem::size_of::<libc::cpu_set_t>() / 8);
    let mut mask = cpus.words.clone();
    mask.resize(words, 0);
    // SAFETY: mask is a readable buffer of exactly words * 8 bytes, the size
    // passed; the syscall only reads it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            0 as libc::pid_t,
            words * 8,
            mask.as_ptr(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(fail(io::Error::last_os_error()))
    }
}

/// Two engine cores that are hyper-thread (SMT) siblings: logical CPUs of
/// one physical core, sharing its execution units and L1/L2 caches, so two
/// busy engine threads on them slow each other down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtSiblings {
    /// The lower CPU id.
    pub cpu: usize,
    /// Its sibling, also an engine core.
    pub sibling: usize,
}

impl fmt::Display for SmtSiblings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cores {} and {} are hyper-thread siblings of one physical core: two engine \
             threads there share its execution units and caches",
            self.cpu, self.sibling
        )
    }
}

/// The hyper-thread siblings of `cpu`, itself included, from
/// `<sys_root>/devices/system/cpu/cpuN/topology/thread_siblings_list`.
pub fn thread_siblings(sys_root: &Path, cpu: usize) -> io::Result<CpuList> {
    let path = sys_root.join(format!(
        "devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
    ));
    let text = std::fs::read_to_string(&path)?;
    CpuList::parse_sysfs(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Every pair of `cores` that are hyper-thread siblings, each pair once,
/// ordered by the lower id. Cores whose topology cannot be read are skipped
/// (a container may hide it): this is advice, not a check that fails.
pub fn smt_sibling_pairs(sys_root: &Path, cores: &CpuList) -> Vec<SmtSiblings> {
    let mut pairs = Vec::new();
    for cpu in cores {
        let Ok(siblings) = thread_siblings(sys_root, cpu) else {
            continue;
        };
        for sibling in siblings.intersection(cores).iter().filter(|&s| s > cpu) {
            pairs.push(SmtSiblings { cpu, sibling });
        }
    }
    pairs
}

/// `cores` with hyper-thread siblings dropped: the lowest CPU of each
/// physical core is kept. What to suggest when [`smt_sibling_pairs`] is not
/// empty.
pub fn one_cpu_per_physical_core(sys_root: &Path, cores: &CpuList) -> CpuList {
    let mut kept = cores.clone();
    for pair in smt_sibling_pairs(sys_root, cores) {
        if kept.contains(pair.cpu) {
            kept.remove(pair.sibling);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(text: &str) -> CpuList {
        text.parse().unwrap()
    }

    fn parse_err(text: &str) -> ParseCpuListError {
        text.parse::<CpuList>().unwrap_err()
    }

    #[test]
    fn parses_taskset_forms() {
        assert_eq!(list("0-3").to_vec(), vec![0, 1, 2, 3]);
        assert_eq!(list("0,2,4-7").to_vec(), vec![0, 2, 4, 5, 6, 7]);
        assert_eq!(list("1-15:2").to_vec(), vec![1, 3, 5, 7, 9, 11, 13, 15]);
        assert_eq!(list("0-10:4").to_vec(), vec![0, 4, 8]);
        assert_eq!(list("5").to_vec(), vec![5]);
        assert_eq!(list("0-39").len(), 40);
        assert_eq!(list("8191").to_vec(), vec![8191]);
    }

    #[test]
    fn tolerates_whitespace_and_duplicates() {
        assert_eq!(list(" 0 - 2 , 4 \n"), list("0-2,4"));
        assert_eq!(list("0 - 7 : 2"), list("0,2,4,6"));
        assert_eq!(list("3,1,2,1-3"), list("1-3"));
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(list("0,1,2,3").to_string(), "0-3");
        assert_eq!(list("0,2,4-7").to_string(), "0,2,4-7");
        assert_eq!(list("1-15:2").to_string(), "1,3,5,7,9,11,13,15");
        assert_eq!(list("0,1").to_string(), "0-1");
        assert_eq!(list("63-65,127,128").to_string(), "63-65,127-128");
        assert_eq!(CpuList::new().to_string(), "");
    }

    #[test]
    fn rejects_garbage_naming_the_item() {
        assert_eq!(parse_err("").kind, ParseErrorKind::Empty);
        assert_eq!(parse_err("  ").kind, ParseErrorKind::Empty);
        assert_eq!(parse_err("0,,1").kind, ParseErrorKind::EmptyItem);
        assert_eq!(parse_err("0,").kind, ParseErrorKind::EmptyItem);
        let e = parse_err("0-3,x");
        assert_eq!(e.item, "x");
        assert!(e.to_string().contains("\"x\" is not a CPU number"), "{e}");
        let e = parse_err("0-3,4-a");
        assert_eq!(e.item, "4-a");
        assert_eq!(e.kind, ParseErrorKind::NotANumber { part: "a".into() });
        assert_eq!(
            parse_err("-1").kind,
            ParseErrorKind::NotANumber { part: "".into() }
        );
        assert_eq!(
            parse_err("0 1").kind,
            ParseErrorKind::NotANumber { part: "0 1".into() }
        );
        assert_eq!(
            parse_err("+1").kind,
            ParseErrorKind::NotANumber { part: "+1".into() }
        );
        assert_eq!(
            parse_err("7-3").kind,
            ParseErrorKind::Reversed { start: 7, end: 3 }
        );
        assert!(parse_err("7-3").to_string().contains("write it as 3-7"));
        assert_eq!(parse_err("0-7:0").kind, ParseErrorKind::ZeroStride);
        assert_eq!(parse_err("4:2").kind, ParseErrorKind::StrideWithoutRange);
        assert_eq!(
            parse_err("0-7:2/4").kind,
            ParseErrorKind::NotANumber { part: "2/4".into() }
        );
        assert_eq!(
            parse_err("8192").kind,
            ParseErrorKind::TooLarge { cpu: 8192 }
        );
        assert_eq!(
            parse_err("0-4000000000").kind,
            ParseErrorKind::TooLarge { cpu: 4_000_000_000 }
        );
        assert_eq!(
            parse_err("99999999999999999999999").kind,
            ParseErrorKind::TooLarge { cpu: u64::MAX }
        );
    }

    #[test]
    fn set_operations() {
        let a = list("0-7");
        let b = list("4-11");
        assert_eq!(a.union(&b), list("0-11"));
        assert_eq!(a.intersection(&b), list("4-7"));
        assert_eq!(a.difference(&b), list("0-3"));
        assert_eq!(b.difference(&a), list("8-11"));
        assert!(list("4-5").is_subset(&a));
        assert!(!b.is_subset(&a));
        assert_eq!(list("0-200").difference(&list("64-200")), list("0-63"));
        assert_eq!(
            list("0-200").difference(&list("64-200")).words.len(),
            1,
            "trimmed"
        );
        assert!(list("3").difference(&list("3")).is_empty());
        assert_eq!(list("3,9,200").first(), Some(3));
        assert_eq!(list("3,9,200").last(), Some(200));
        assert_eq!(list("3,9,200").nth(1), Some(9));
        assert_eq!(list("3,9,200").nth(3), None);
        assert!(list("3,9,200").contains(200));
        assert!(!list("3,9,200").contains(199));
        assert!(!list("3,9,200").contains(100_000));
        let mut l = list("1-2");
        l.remove(2);
        l.remove(5000);
        assert_eq!(l, list("1"));
        assert!(l.insert(CPU_ID_LIMIT).is_err());
    }

    #[test]
    fn availability_errors_name_cores_and_list_available_ones() {
        let online = list("0-1");
        let allowed = list("0-1");
        assert_eq!(list("0-1").check_available(&online, &allowed), Ok(()));
        let e = list("7").check_available(&online, &allowed).unwrap_err();
        assert_eq!(e.missing, list("7"));
        assert_eq!(
            e.to_string(),
            "core 7 does not exist; this machine has cores 0-1"
        );
        let e = list("0-3").check_available(&online, &allowed).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cores 2-3 do not exist; this machine has cores 0-1"
        );

        let online = list("0-7");
        let allowed = list("0-3");
        let e = list("2-5").check_available(&online, &allowed).unwrap_err();
        assert_eq!(e.missing, CpuList::new());
        assert_eq!(e.not_allowed, list("4-5"));
        let text = e.to_string();
        assert!(
            text.starts_with("cores 4-5 not allowed for this process"),
            "{text}"
        );
        assert!(text.contains("affinity mask is 0-3"), "{text}");

        let e = list("6,9").check_available(&online, &allowed).unwrap_err();
        assert_eq!(e.missing, list("9"));
        assert_eq!(e.not_allowed, list("6"));
        assert!(e.to_string().starts_with(
            "core 9 does not exist; this machine has cores 0-7; and core 6 not allowed"
        ));

        let e = CpuList::new()
            .check_available(&online, &allowed)
            .unwrap_err();
        assert!(e.to_string().contains("no cores were given"));
    }

    #[test]
    fn this_host_has_an_allowed_cpu_inside_the_online_ones() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let online = online_cpus(Path::new("/sys")).unwrap();
        assert!(
            allowed.is_subset(&online),
            "allowed {allowed} online {online}"
        );
        assert!(allowed.check_on_this_host().is_ok());
        let e = list("8191").check_on_this_host().unwrap_err();
        assert_eq!(e.missing, list("8191"));
    }

    #[test]
    fn pinning_moves_the_thread_and_bad_cores_give_errors() {
        let allowed = allowed_cpus().unwrap();
        let target = allowed.last().unwrap();
        // A fresh thread, so the test harness's thread keeps its mask.
        std::thread::spawn(move || {
            pin_current_thread(target).unwrap();
            assert_eq!(
                current_thread_affinity().unwrap(),
                CpuList::from_cpus([target]).unwrap()
            );
            // The process mask (the main thread's) is untouched.
            assert_eq!(allowed_cpus().unwrap(), allowed);
            set_current_thread_affinity(&allowed).unwrap();
            assert_eq!(current_thread_affinity().unwrap(), allowed);

            let e = pin_current_thread(8191).unwrap_err();
            assert_eq!(e.source.raw_os_error(), Some(libc::EINVAL));
            assert!(
                e.to_string()
                    .starts_with("cannot pin this thread to core 8191"),
                "{e}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("may run only on cores {allowed}")),
                "{e}"
            );
            assert!(pin_current_thread(CPU_ID_LIMIT).is_err());
            assert!(set_current_thread_affinity(&CpuList::new()).is_err());
            // Failed attempts leave the mask as it was.
            assert_eq!(current_thread_affinity().unwrap(), allowed);
        })
        .join()
        .unwrap();
    }

    /// A fake /sys with `cpus` online and each group in `sibling_groups`
    /// sharing one physical core.
    fn fake_sys(name: &str, cpus: &str, sibling_groups: &[&str]) -> crate::testdir::TestDir {
        let dir = crate::testdir::TestDir::new(name);
        dir.write("devices/system/cpu/online", &format!("{cpus}\n"));
        for group in sibling_groups {
            for cpu in list(group).iter() {
                dir.write(
                    &format!("devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"),
                    &format!("{group}\n"),
                );
            }
        }
        dir
    }

    #[test]
    fn reads_online_cpus_from_a_fake_tree() {
        let sys = fake_sys("online", "0-3,8-11", &[]);
        assert_eq!(online_cpus(sys.path()).unwrap(), list("0-3,8-11"));
        sys.write("devices/system/cpu/online", "\n");
        assert_eq!(online_cpus(sys.path()).unwrap(), CpuList::new());
        sys.write("devices/system/cpu/online", "zero\n");
        let e = online_cpus(sys.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("devices/system/cpu/online"));
    }

    #[test]
    fn finds_hyper_thread_siblings_among_engine_cores() {
        // Two sockets' worth, numbered like most x86 servers: cpu N and N+4
        // share a physical core.
        let sys = fake_sys("smt", "0-7", &["0,4", "1,5", "2,6", "3,7"]);
        assert_eq!(smt_sibling_pairs(sys.path(), &list("0-3")), vec![]);
        assert_eq!(
            smt_sibling_pairs(sys.path(), &list("0-5")),
            vec![
                SmtSiblings { cpu: 0, sibling: 4 },
                SmtSiblings { cpu: 1, sibling: 5 }
            ]
        );
        assert_eq!(
            one_cpu_per_physical_core(sys.path(), &list("0-7")),
            list("0-3")
        );
        assert_eq!(
            one_cpu_per_physical_core(sys.path(), &list("2,4-7")),
            list("2,4-5,7")
        );
        let text = SmtSiblings { cpu: 0, sibling: 4 }.to_string();
        assert!(
            text.starts_with("cores 0 and 4 are hyper-thread siblings"),
            "{text}"
        );
        // Unreadable topology is skipped, not an error.
        assert_eq!(smt_sibling_pairs(sys.path(), &list("100-101")), vec![]);
        // Adjacent numbering (AMD, many VMs): 0-1 share a core.
        let sys = fake_sys("smt-adjacent", "0-3", &["0-1", "2-3"]);
        assert_eq!(smt_sibling_pairs(sys.path(), &list("0-3")).len(), 2);
    }

    proptest! {
        #[test]
        fn format_then_parse_gives_the_same_set(cpus in proptest::collection::btree_set(0usize..CPU_ID_LIMIT, 1..200)) {
            let l = CpuList::from_cpus(cpus.iter().copied()).unwrap();
            prop_assert_eq!(l.len(), cpus.len());
            let text = l.to_string();
            let back: CpuList = text.parse().unwrap();
            prop_assert_eq!(&back, &l);
            prop_assert_eq!(back.to_vec(), cpus.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(back.to_string(), text);
        }

        #[test]
        fn dense_runs_round_trip(start in 0usize..8000, len in 1usize..190, stride in 1usize..5) {
            let end = (start + len).min(CPU_ID_LIMIT - 1);
            let l: CpuList = format!("{start}-{end}:{stride}").parse().unwrap();
            let expected: Vec<usize> = (start..=end).step_by(stride).collect();
            prop_assert_eq!(l.to_vec(), expected);
            prop_assert_eq!(l.to_string().parse::<CpuList>().unwrap(), l);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = text.parse::<CpuList>();
        }

        #[test]
        fn parse_of_list_like_garbage_never_panics(text in "[0-9,: \\-/x]{0,30}") {
            if let Ok(l) = text.parse::<CpuList>() {
                prop_assert!(!l.is_empty());
                prop_assert_eq!(l.to_string().parse::<CpuList>().unwrap(), l);
            }
        }
    }
}
