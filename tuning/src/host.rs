//! Host checks: is this machine set up for low-latency matching on the
//! engine cores? Each check reads `/sys` or `/proc` (under roots the caller
//! chooses, so tests use fake trees) and becomes one [`CheckItem`] with the
//! current value, the recommended one and the command that fixes it.
//! Nothing here changes the host and nothing is fatal: `turbo-dex
//! check-host` prints the [`HostReport`] and exits non-zero when something
//! is off; both binaries print the warnings at start-up with
//! [`print_startup_warnings`]. `scripts/tune-host.sh` applies the fixes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::cpu::{self, CpuList};
use crate::mtu;
use crate::rlimit::{self, MEMLOCK_UNLIMITED, MemlockLimit};

/// The values scripts/tune-host.sh sets and these checks expect, from Red
/// Hat's tuned profiles (github.com/redhat-performance/tuned, `profiles/`).
/// A test keeps the script's values equal to these.
pub mod recommended {
    /// `latency-performance` (included by `network-latency`): `governor=performance`.
    pub const GOVERNOR: &str = "performance";
    /// `network-latency` sets `transparent_hugepages=never`. We accept
    /// `never` and recommend `madvise`: both keep khugepaged's compaction
    /// and fault-time huge-page allocation (the latency spikes) away from
    /// processes that did not ask, and `madvise` still lets an engine that
    /// calls `madvise(MADV_HUGEPAGE)` on its pre-allocated book memory get
    /// huge pages and fewer TLB misses.
    pub const THP: &str = "madvise";
    /// `network-latency`: `net.core.busy_read=50` (microseconds).
    pub const BUSY_READ_US: u64 = 50;
    /// `network-latency`: `net.core.busy_poll=50` (microseconds).
    pub const BUSY_POLL_US: u64 = 50;
    /// `throughput-performance` asks for `net.core.somaxconn` of at least
    /// 2048; 4096 is the kernel's own default since 5.4 and our listen backlog.
    pub const SOMAXCONN: u64 = 4096;
    /// `network-throughput` raises the TCP autotuning maximum to 16 MiB
    /// (`net.ipv4.tcp_rmem="4096 131072 16777216"`); `net.core.rmem_max`
    /// gets the same so an explicit `SO_RCVBUF` can reach what autotuning can.
    pub const RMEM_MAX_BYTES: u64 = 16 << 20;
    /// As [`RMEM_MAX_BYTES`], for sends (`tcp_wmem="4096 16384 16777216"`).
    pub const WMEM_MAX_BYTES: u64 = 16 << 20;
    /// `network-throughput`: `net.ipv4.tcp_rmem` (min, default, max bytes).
    pub const TCP_RMEM: [u64; 3] = [4096, 131072, 16 << 20];
    /// `network-throughput`: `net.ipv4.tcp_wmem` (min, default, max bytes).
    pub const TCP_WMEM: [u64; 3] = [4096, 16384, 16 << 20];
}

/// The memlock limit below which [`check_host`] warns unless told
/// otherwise: room for the io_uring rings and provided-buffer rings of a
/// few dozen cores on kernels before 5.12 (which charge them to
/// RLIMIT_MEMLOCK). Callers that know their need pass it instead.
pub const DEFAULT_MEMLOCK_MIN_BYTES: u64 = 64 << 20;

/// What to check and where to read.
#[derive(Clone, Debug)]
pub struct HostCheckConfig {
    /// Where sysfs is ([`crate::SYS_ROOT`] on a real machine).
    pub sys_root: PathBuf,
    /// Where procfs is ([`crate::PROC_ROOT`] on a real machine).
    pub proc_root: PathBuf,
    /// The engine cores (`--cores`).
    pub cores: CpuList,
    /// The network interface clients come in on (`--iface`), if known.
    pub iface: Option<String>,
    /// The MTU the sends are sized for (`--mtu`), if given.
    pub mtu_bytes: Option<usize>,
    /// Warn when the soft memlock limit is below this.
    pub memlock_min_bytes: u64,
    /// The CPUs this process may use; `None` reads its affinity mask.
    pub allowed_cpus: Option<CpuList>,
}

impl HostCheckConfig {
    /// Checks of this machine for engine cores `cores`, no interface or MTU.
    pub fn new(cores: CpuList) -> Self {
        HostCheckConfig {
            sys_root: PathBuf::from(crate::SYS_ROOT),
            proc_root: PathBuf::from(crate::PROC_ROOT),
            cores,
            iface: None,
            mtu_bytes: None,
            memlock_min_bytes: DEFAULT_MEMLOCK_MIN_BYTES,
            allowed_cpus: None,
        }
    }

    /// Also check interface `iface` (its MTU, its interrupts).
    pub fn with_iface(mut self, iface: impl Into<String>) -> Self {
        self.iface = Some(iface.into());
        self
    }

    /// Also check that the interface carries `mtu_bytes`.
    pub fn with_mtu(mut self, mtu_bytes: usize) -> Self {
        self.mtu_bytes = Some(mtu_bytes);
        self
    }

    /// Read `/sys` and `/proc` under other roots (tests).
    pub fn with_roots(
        mut self,
        sys_root: impl Into<PathBuf>,
        proc_root: impl Into<PathBuf>,
    ) -> Self {
        self.sys_root = sys_root.into();
        self.proc_root = proc_root.into();
        self
    }
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// As recommended.
    Ok,
    /// Not as recommended: latency or throughput will suffer. Makes the
    /// report "not tuned".
    Warn,
    /// Could not be told (the setting does not exist here, as cpufreq in
    /// most VMs, or could not be read). Does not make the report "not tuned".
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Unknown => "unknown",
        })
    }
}

/// One line of a [`HostReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckItem {
    /// A short stable name: `cores`, `smt`, `governor`, `irqbalance`,
    /// `thp`, `nic-irqs`, `memlock`, `mtu`, or a sysctl name such as
    /// `net.core.busy_read`.
    pub name: String,
    /// The outcome.
    pub status: Status,
    /// What the machine has now.
    pub current: String,
    /// What we recommend.
    pub recommended: String,
    /// A command (or the step) that fixes it; empty when nothing is to do.
    pub fix: String,
}

impl CheckItem {
    fn new(
        name: impl Into<String>,
        status: Status,
        current: impl Into<String>,
        recommended: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        CheckItem {
            name: name.into(),
            status,
            current: current.into(),
            recommended: recommended.into(),
            fix: fix.into(),
        }
    }
}

/// The result of [`check_host`]: one item per check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostReport {
    /// In the order checked.
    pub items: Vec<CheckItem>,
}

impl HostReport {
    /// Whether no check warns ([`Status::Unknown`] items do not count).
    pub fn is_tuned(&self) -> bool {
        self.warnings().next().is_none()
    }

    /// The process exit code for `check-host`: 0 when tuned, 1 when not.
    pub fn exit_code(&self) -> u8 {
        if self.is_tuned() { 0 } else { 1 }
    }

    /// The items that warn.
    pub fn warnings(&self) -> impl Iterator<Item = &CheckItem> {
        self.items.iter().filter(|i| i.status == Status::Warn)
    }

    /// The item called `name`.
    pub fn get(&self, name: &str) -> Option<&CheckItem> {
        self.items.iter().find(|i| i.name == name)
    }

    /// Writes one line per warning, each prefixed with `program: warning:`,
    /// for a binary's start-up.
    pub fn write_warnings(&self, program: &str, out: &mut dyn io::Write) -> io::Result<()> {
        for item in self.warnings() {
            write!(
                out,
                "{program}: warning: {}: {} (recommended: {})",
                item.name, item.current, item.recommended
            )?;
            if item.fix.is_empty() {
                writeln!(out)?;
            } else {
                writeln!(out, "; fix: {}", item.fix)?;
            }
        }
        Ok(())
    }
}

/// A table: status, check, current, recommended; then the fixes for the
/// items that are not ok.
impl fmt::Display for HostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_width = self
            .items
            .iter()
            .map(|i| i.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let current_width = self
            .items
            .iter()
            .map(|i| i.current.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(7, 48);
        writeln!(
            f,
            "{:<7}  {:<name_width$}  {:<current_width$}  recommended",
            "status", "check", "current"
        )?;
        for item in &self.items {
            writeln!(
                f,
                "{:<7}  {:<name_width$}  {:<current_width$}  {}",
                item.status, item.name, item.current, item.recommended
            )?;
        }
        let fixes = self
            .items
            .iter()
            .filter(|i| i.status != Status::Ok && !i.fix.is_empty())
            .collect::<Vec<_>>();
        if !fixes.is_empty() {
            writeln!(f, "\nto fix:")?;
            for item in fixes {
                writeln!(f, "  {:<name_width$}  {}", item.name, item.fix)?;
            }
        }
        if self.is_tuned() {
            writeln!(f, "\nhost is tuned for these cores")
        } else {
            writeln!(
                f,
                "\nhost is NOT tuned: {} warning(s); scripts/tune-host.sh applies the fixes",
                self.warnings().count()
            )
        }
    }
}

/// Runs every check. Never fails: what cannot be read is [`Status::Unknown`].
pub fn check_host(config: &HostCheckConfig) -> HostReport {
    let tune = tune_command(config);
    let mut items = vec![check_cores(config)];
    items.push(check_smt(config));
    items.push(check_governor(config, &tune));
    items.push(check_irqbalance(config));
    items.push(check_nic_irqs(config, &tune));
    items.push(check_thp(config, &tune));
    items.push(check_memlock(config, &tune));
    items.push(check_mtu(config, &tune));
    items.extend(check_net_sysctls(config, &tune));
    HostReport { items }
}

/// Runs [`check_host`] and prints its warnings to stderr as
/// `program: warning: ...` lines (nothing when the host is tuned). What
/// both binaries call at start-up; returns the report for callers that
/// also want to log or expose it.
pub fn print_startup_warnings(program: &str, config: &HostCheckConfig) -> HostReport {
    let report = check_host(config);
    let stderr = io::stderr();
    // Start-up goes on whether or not stderr can be written.
    let _ = report.write_warnings(program, &mut stderr.lock());
    report
}

fn tune_command(config: &HostCheckConfig) -> String {
    let mut command = format!("scripts/tune-host.sh --cores {}", config.cores);
    if let Some(iface) = &config.iface {
        command.push_str(&format!(" --iface {iface}"));
    }
    if let Some(mtu) = config.mtu_bytes {
        command.push_str(&format!(" --mtu {mtu}"));
    }
    command
}

fn read_trimmed(path: &Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

fn allowed_cpus(config: &HostCheckConfig) -> Option<CpuList> {
    config
        .allowed_cpus
        .clone()
        .or_else(|| cpu::allowed_cpus().ok())
}

fn check_cores(config: &HostCheckConfig) -> CheckItem {
    let recommended = "cores that exist and this process may use";
    let online = match cpu::online_cpus(&config.sys_root) {
        Ok(online) => online,
        Err(e) => {
            return CheckItem::new(
                "cores",
                Status::Unknown,
                format!("cannot read online CPUs: {e}"),
                recommended,
                "",
            );
        }
    };
    let allowed = allowed_cpus(config).unwrap_or_else(|| online.clone());
    match config.cores.check_available(&online, &allowed) {
        Ok(()) => CheckItem::new(
            "cores",
            Status::Ok,
            format!("{} of online {}", config.cores, online),
            recommended,
            "",
        ),
        Err(e) => CheckItem::new(
            "cores",
            Status::Warn,
            e.to_string(),
            recommended,
            format!("pass --cores within {}", online.intersection(&allowed)),
        ),
    }
}

fn check_smt(config: &HostCheckConfig) -> CheckItem {
    let recommended = "one engine core per physical core";
    let readable = config
        .cores
        .iter()
        .any(|cpu| cpu::thread_siblings(&config.sys_root, cpu).is_ok());
    if !readable {
        return CheckItem::new(
            "smt",
            Status::Unknown,
            "CPU topology not readable",
            recommended,
            "",
        );
    }
    let pairs = cpu::smt_sibling_pairs(&config.sys_root, &config.cores);
    if pairs.is_empty() {
        return CheckItem::new(
            "smt",
            Status::Ok,
            "no two engine cores share a physical core",
            recommended,
            "",
        );
    }
    let listed = pairs
        .iter()
        .map(|p| format!("{}+{}", p.cpu, p.sibling))
        .collect::<Vec<_>>()
        .join(", ");
    CheckItem::new(
        "smt",
        Status::Warn,
        format!("hyper-thread siblings among engine cores: {listed}"),
        recommended,
        format!(
            "--cores {} (one per physical core)",
            cpu::one_cpu_per_physical_core(&config.sys_root, &config.cores)
        ),
    )
}

fn check_governor(config: &HostCheckConfig, tune: &str) -> CheckItem {
    let recommended = recommended::GOVERNOR;
    // governor -> cores that have it, in first-seen order.
    let mut by_governor: Vec<(String, CpuList)> = Vec::new();
    let mut missing = CpuList::new();
    for cpu in &config.cores {
        let path = config.sys_root.join(format!(
            "devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
        ));
        match read_trimmed(&path) {
            Ok(governor) => match by_governor.iter_mut().find(|(g, _)| *g == governor) {
                Some((_, cpus)) => {
                    let _ = cpus.insert(cpu);
                }
                None => by_governor.push((governor, CpuList::from_cpus([cpu]).unwrap_or_default())),
            },
            Err(_) => {
                let _ = missing.insert(cpu);
            }
        }
    }
    if by_governor.is_empty() {
        return CheckItem::new(
            "governor",
            Status::Unknown,
            "no cpufreq on these cores (a VM, or frequency scaling is off in firmware): nothing to set",
            recommended,
            "",
        );
    }
    let mut current = by_governor
        .iter()
        .map(|(g, cpus)| format!("{g} on {cpus}"))
        .collect::<Vec<_>>();
    if !missing.is_empty() {
        current.push(format!("no cpufreq on {missing}"));
    }
    let slow = by_governor
        .iter()
        .filter(|(g, _)| g != recommended)
        .fold(CpuList::new(), |all, (_, cpus)| all.union(cpus));
    if slow.is_empty() {
        CheckItem::new("governor", Status::Ok, current.join(", "), recommended, "")
    } else {
        CheckItem::new(
            "governor",
            Status::Warn,
            current.join(", "),
            recommended,
            format!("{tune} --only cpu (or: cpupower -c {slow} frequency-set -g performance)"),
        )
    }
}

/// Process ids whose `comm` is `name`, from `<proc_root>/<pid>/comm`.
pub fn processes_named(proc_root: &Path, name: &str) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between read_dir and the read: skip it.
        if read_trimmed(&entry.path().join("comm")).is_ok_and(|comm| comm == name) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

fn check_irqbalance(config: &HostCheckConfig) -> CheckItem {
    let recommended = "not running (it would move NIC interrupts back onto engine cores)";
    match processes_named(&config.proc_root, "irqbalance") {
        Ok(pids) if pids.is_empty() => {
            CheckItem::new("irqbalance", Status::Ok, "not running", recommended, "")
        }
        Ok(pids) => CheckItem::new(
            "irqbalance",
            Status::Warn,
            format!(
                "running (pid {})",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            recommended,
            "systemctl stop irqbalance (or: scripts/tune-host.sh ... --only irq)",
        ),
        Err(e) => CheckItem::new(
            "irqbalance",
            Status::Unknown,
            format!("cannot list processes: {e}"),
            recommended,
            "",
        ),
    }
}

/// The selected value of a sysfs choice file such as
/// `always [madvise] never`.
fn bracketed(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}

fn check_thp(config: &HostCheckConfig, tune: &str) -> CheckItem {
    let recommended = "madvise (or never)";
    let path = config
        .sys_root
        .join("kernel/mm/transparent_hugepage/enabled");
    let text = match read_trimmed(&path) {
        Ok(text) => text,
        Err(_) => {
            return CheckItem::new(
                "thp",
                Status::Unknown,
                "no transparent huge pages in this kernel",
                recommended,
                "",
            );
        }
    };
    match bracketed(&text) {
        Some(mode @ ("madvise" | "never")) => {
            CheckItem::new("thp", Status::Ok, mode, recommended, "")
        }
        Some(mode) => CheckItem::new(
            "thp",
            Status::Warn,
            mode,
            recommended,
            format!(
                "{tune} --only thp (or: echo {} > /sys/kernel/mm/transparent_hugepage/enabled)",
                recommended::THP
            ),
        ),
        None => CheckItem::new(
            "thp",
            Status::Unknown,
            format!("unreadable: {text:?}"),
            recommended,
            "",
        ),
    }
}

/// One line of `/proc/interrupts` for a numbered IRQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterruptLine {
    /// The IRQ number.
    pub irq: u32,
    /// Interrupts taken per CPU since boot, as `(cpu, count)`.
    pub counts: Vec<(usize, u64)>,
    /// The rest of the line: controller, trigger and the action names
    /// (such as `virtio2-input.0` or `mlx5_comp3@pci:0000:3b:00.0`).
    pub description: String,
}

/// Parses `/proc/interrupts`: the header names the CPU of each column
/// (offline CPUs have none), numbered lines are IRQs; the per-CPU lines
/// (`NMI:`, `LOC:` ...) are skipped.
pub fn parse_interrupts(text: &str) -> Vec<InterruptLine> {
    let mut lines = text.lines();
    let cpus = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|column| column.strip_prefix("CPU")?.parse::<usize>().ok())
        .collect::<Vec<_>>();
    let mut parsed = Vec::new();
    for line in lines {
        let Some((irq, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(irq) = irq.trim().parse::<u32>() else {
            continue;
        };
        let mut counts = Vec::with_capacity(cpus.len());
        let mut rest = rest.trim_start();
        for &cpu in &cpus {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let Ok(count) = rest[..end].parse::<u64>() else {
                break;
            };
            counts.push((cpu, count));
            rest = rest[end..].trim_start();
        }
        parsed.push(InterruptLine {
            irq,
            counts,
            description: rest.trim().to_string(),
        });
    }
    parsed
}

/// Prefixes of interrupt action names that NIC drivers use, for when no
/// interface is named. virtio-net queues are matched separately.
const NIC_IRQ_NAME_PREFIXES: &[&str] = &[
    "eth", "ens", "enp", "eno", "mlx4", "mlx5", "i40e", "ice", "ixgbe", "igb", "bnxt", "ena-",
    "gve",
];

fn is_virtio_net_queue(action: &str) -> bool {
    // virtio-net names its queue interrupts virtioN-input.Q / virtioN-output.Q.
    let Some(rest) = action.strip_prefix("virtio") else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let rest = &rest[digits..];
    digits > 0
        && (rest
            .strip_prefix("-input.")
            .or_else(|| rest.strip_prefix("-output.")))
        .is_some_and(|queue| !queue.is_empty() && queue.bytes().all(|b| b.is_ascii_digit()))
}

/// IRQ numbers of interface `iface`'s device, from its MSI vectors:
/// `<sys_root>/class/net/<iface>/device/msi_irqs/` for a PCI NIC, or the
/// parent's for a virtio NIC (`device` is then the virtio device).
pub fn interface_msi_irqs(sys_root: &Path, iface: &str) -> Vec<u32> {
    let device = sys_root.join("class/net").join(iface).join("device");
    for dir in [device.join("msi_irqs"), device.join("../msi_irqs")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut irqs = entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .collect::<Vec<_>>();
            if !irqs.is_empty() {
                irqs.sort_unstable();
                return irqs;
            }
        }
    }
    Vec::new()
}

/// The interrupt lines that belong to network interfaces: those of
/// `iface` (its MSI vectors, or actions naming it) when given, otherwise
/// those of every interface with a device, plus actions that look like NIC
/// queues.
pub fn nic_interrupts(
    sys_root: &Path,
    interrupts: &[InterruptLine],
    iface: Option<&str>,
) -> Vec<InterruptLine> {
    let ifaces = match iface {
        Some(iface) => vec![iface.to_string()],
        None => mtu::interfaces(sys_root).unwrap_or_default(),
    };
    let mut irqs = Vec::new();
    for name in &ifaces {
        irqs.extend(interface_msi_irqs(sys_root, name));
    }
    interrupts
        .iter()
        .filter(|line| {
            let actions = line.description.split_whitespace().last().unwrap_or("");
            irqs.contains(&line.irq)
                || actions.split(',').any(|action| {
                    let action = action.trim();
                    match iface {
                        Some(iface) => action == iface || action.starts_with(&format!("{iface}-")),
                        None => {
                            is_virtio_net_queue(action)
                                || NIC_IRQ_NAME_PREFIXES.iter().any(|p| action.starts_with(p))
                        }
                    }
                })
        })
        .cloned()
        .collect()
}

fn check_nic_irqs(config: &HostCheckConfig, tune: &str) -> CheckItem {
    let name = "nic-irqs";
    let online = cpu::online_cpus(&config.sys_root).unwrap_or_default();
    let others = online.difference(&config.cores);
    let recommended = if others.is_empty() {
        "NIC interrupts off the engine cores (leave at least one core out of --cores for them)"
            .to_string()
    } else {
        format!("NIC interrupts on {others}, off the engine cores")
    };
    let text = match std::fs::read_to_string(config.proc_root.join("interrupts")) {
        Ok(text) => text,
        Err(e) => {
            return CheckItem::new(
                name,
                Status::Unknown,
                format!("cannot read interrupts: {e}"),
                recommended,
                "",
            );
        }
    };
    let nic = nic_interrupts(
        &config.sys_root,
        &parse_interrupts(&text),
        config.iface.as_deref(),
    );
    if nic.is_empty() {
        let which = config
            .iface
            .as_deref()
            .map_or("any network interface".to_string(), |i| {
                format!("interface {i}")
            });
        return CheckItem::new(
            name,
            Status::Unknown,
            format!("no interrupts found for {which}"),
            recommended,
            "",
        );
    }
    let mut on_engine = Vec::new();
    for line in &nic {
        let affinity = std::fs::read_to_string(
            config
                .proc_root
                .join(format!("irq/{}/smp_affinity_list", line.irq)),
        )
        .ok()
        .and_then(|t| CpuList::parse_sysfs(&t).ok());
        let taken_on_engine: u64 = line
            .counts
            .iter()
            .filter(|(cpu, _)| config.cores.contains(*cpu))
            .map(|(_, count)| count)
            .sum();
        let action = line.description.split_whitespace().last().unwrap_or("?");
        // The affinity says where the next interrupts go; the counts are
        // since boot and only decide when the affinity cannot be read.
        match affinity {
            Some(affinity) if !affinity.intersection(&config.cores).is_empty() => {
                on_engine.push(format!("{} {action} -> {affinity}", line.irq));
            }
            None if taken_on_engine > 0 => {
                on_engine.push(format!(
                    "{} {action} ({taken_on_engine} on engine cores)",
                    line.irq
                ));
            }
            _ => {}
        }
    }
    if on_engine.is_empty() {
        return CheckItem::new(
            name,
            Status::Ok,
            format!(
                "{} NIC interrupt(s), none routed to engine cores",
                nic.len()
            ),
            recommended,
            "",
        );
    }
    let fix = if others.is_empty() {
        format!("leave a core out of --cores, then {tune} --only irq")
    } else {
        format!("{tune} --only irq (or: echo {others} > /proc/irq/N/smp_affinity_list)")
    };
    CheckItem::new(
        name,
        Status::Warn,
        format!(
            "{} of {} NIC interrupt(s) may run on engine cores: {}",
            on_engine.len(),
            nic.len(),
            on_engine.join(", ")
        ),
        recommended,
        fix,
    )
}

/// RLIMIT_MEMLOCK from `<proc_root>/self/limits` ("Max locked memory").
pub fn memlock_from_proc(proc_root: &Path) -> io::Result<MemlockLimit> {
    let text = std::fs::read_to_string(proc_root.join("self/limits"))?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no readable \"Max locked memory\" line in self/limits",
        )
    };
    let line = text
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .ok_or_else(bad)?;
    let mut fields = line["Max locked memory".len()..].split_whitespace();
    let mut value = || match fields.next() {
        Some("unlimited") => Ok(MEMLOCK_UNLIMITED),
        Some(n) => n.parse::<u64>().map_err(|_| bad()),
        None => Err(bad()),
    };
    Ok(MemlockLimit {
        soft_bytes: value()?,
        hard_bytes: value()?,
    })
}

fn check_memlock(config: &HostCheckConfig, tune: &str) -> CheckItem {
    let recommended = format!(
        "at least {}",
        rlimit::format_limit_bytes(config.memlock_min_bytes)
    );
    match memlock_from_proc(&config.proc_root) {
        Ok(limit) if limit.soft_bytes >= config.memlock_min_bytes => {
            CheckItem::new("memlock", Status::Ok, limit.to_string(), recommended, "")
        }
        Ok(limit) if limit.hard_bytes >= config.memlock_min_bytes => CheckItem::new(
            "memlock",
            Status::Ok,
            format!("{limit} (the program raises the soft limit itself)"),
            recommended,
            "",
        ),
        Ok(limit) => CheckItem::new(
            "memlock",
            Status::Warn,
            limit.to_string(),
            recommended,
            format!(
                "{tune} --only memlock and log in again; or `ulimit -l unlimited` as root, \
                 systemd LimitMEMLOCK=infinity, docker --ulimit memlock=-1"
            ),
        ),
        Err(e) => CheckItem::new(
            "memlock",
            Status::Unknown,
            format!("cannot read: {e}"),
            recommended,
            "",
        ),
    }
}

fn check_mtu(config: &HostCheckConfig, tune: &str) -> CheckItem {
    let recommended = match config.mtu_bytes {
        Some(mtu) => format!("at least --mtu {mtu}"),
        None => "as the network carries (9000 for jumbo frames)".to_string(),
    };
    let Some(iface) = &config.iface else {
        let current = if config.mtu_bytes.is_some() {
            "no --iface given to compare with"
        } else {
            "no --iface given"
        };
        return CheckItem::new("mtu", Status::Unknown, current, recommended, "");
    };
    match mtu::interface_mtu(&config.sys_root, iface) {
        Ok(actual) => match config
            .mtu_bytes
            .and_then(|wanted| mtu::mtu_warning(iface, wanted, actual))
        {
            None => CheckItem::new(
                "mtu",
                Status::Ok,
                format!("{iface} {actual}"),
                recommended,
                "",
            ),
            Some(warning) => CheckItem::new(
                "mtu",
                Status::Warn,
                format!("{iface} {actual}"),
                recommended,
                format!("{tune} --only mtu ({warning})"),
            ),
        },
        Err(e) => CheckItem::new(
            "mtu",
            Status::Warn,
            e.to_string(),
            recommended,
            "pass an existing --iface",
        ),
    }
}

fn check_net_sysctls(config: &HostCheckConfig, tune: &str) -> Vec<CheckItem> {
    let at_least = [
        ("net.core.busy_read", recommended::BUSY_READ_US),
        ("net.core.busy_poll", recommended::BUSY_POLL_US),
        ("net.core.somaxconn", recommended::SOMAXCONN),
        ("net.core.rmem_max", recommended::RMEM_MAX_BYTES),
        ("net.core.wmem_max", recommended::WMEM_MAX_BYTES),
    ];
    let mut items = Vec::new();
    for (name, wanted) in at_least {
        let path = config.proc_root.join("sys").join(name.replace('.', "/"));
        let item = match read_trimmed(&path).map(|t| t.parse::<u64>()) {
            Ok(Ok(value)) if value >= wanted => CheckItem::new(
                name,
                Status::Ok,
                value.to_string(),
                format!(">= {wanted}"),
                "",
            ),
            Ok(Ok(value)) => CheckItem::new(
                name,
                Status::Warn,
                value.to_string(),
                format!(">= {wanted}"),
                format!("{tune} --only net (or: sysctl -w {name}={wanted})"),
            ),
            Ok(Err(_)) => CheckItem::new(
                name,
                Status::Unknown,
                "not a number",
                format!(">= {wanted}"),
                "",
            ),
            Err(_) => CheckItem::new(
                name,
                Status::Unknown,
                "not in this kernel or namespace",
                format!(">= {wanted}"),
                "",
            ),
        };
        items.push(item);
    }
    for (name, wanted) in [
        ("net.ipv4.tcp_rmem", recommended::TCP_RMEM),
        ("net.ipv4.tcp_wmem", recommended::TCP_WMEM),
    ] {
        let path = config.proc_root.join("sys").join(name.replace('.', "/"));
        let wanted_text = format!(
            "max >= {} ({} {} {})",
            wanted[2], wanted[0], wanted[1], wanted[2]
        );
        let values = read_trimmed(&path).map(|t| {
            t.split_whitespace()
                .map(|v| v.parse::<u64>())
                .collect::<Result<Vec<_>, _>>()
        });
        let item = match values {
            Ok(Ok(values)) if values.len() == 3 => {
                let current = format!("{} {} {}", values[0], values[1], values[2]);
                if values[2] >= wanted[2] {
                    CheckItem::new(name, Status::Ok, current, wanted_text, "")
                } else {
                    CheckItem::new(
                        name,
                        Status::Warn,
                        current,
                        wanted_text,
                        format!(
                            "{tune} --only net (or: sysctl -w {name}=\"{} {} {}\")",
                            wanted[0], wanted[1], wanted[2]
                        ),
                    )
                }
            }
            Ok(_) => CheckItem::new(name, Status::Unknown, "not three numbers", wanted_text, ""),
            Err(_) => CheckItem::new(
                name,
                Status::Unknown,
                "not in this kernel or namespace",
                wanted_text,
                "",
            ),
        };
        items.push(item);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    const INTERRUPTS: &str = "           CPU0       CPU1       CPU2       CPU3       \n  \
 24:          1          0          0          0  IO-APIC   5-edge      ACPI:Ged\n  \
 37:          0          0          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config\n  \
 38:          0       2427          0          0 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n  \
 39:       1833          0          0          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n  \
 41:       1923          0          5          0 PCI-MSIX-0000:00:04.0   1-edge      virtio3-rx\n \
NMI:          0          0          0          0   Non-maskable interrupts\n \
LOC:      75684      82718      1          1   Local timer interrupts\n \
ERR:          0\n";

    /// A tuned 4-CPU machine: performance governor, THP madvise, no
    /// irqbalance, NIC IRQs on CPU 0, engine cores 1-3 expected.
    fn tuned_machine(name: &str) -> (TestDir, TestDir) {
        let sys = TestDir::new(&format!("{name}-sys"));
        let proc_ = TestDir::new(&format!("{name}-proc"));
        sys.write("devices/system/cpu/online", "0-3\n");
        for cpu in 0..4 {
            sys.write(
                &format!("devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                "performance\n",
            );
            sys.write(
                &format!("devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"),
                &format!("{cpu}\n"),
            );
        }
        sys.write(
            "kernel/mm/transparent_hugepage/enabled",
            "always [madvise] never\n",
        );
        sys.write("class/net/eth0/mtu", "9000\n");
        sys.write("class/net/lo/mtu", "65536\n");
        // virtio style: the PCI parent has the vectors; a real directory
        // `device` makes `device/..` the interface's own directory.
        sys.write("class/net/eth0/device/vendor", "0x1af4\n");
        for irq in [37, 38, 39] {
            sys.write(&format!("class/net/eth0/msi_irqs/{irq}"), "msix\n");
        }
        proc_.write("interrupts", INTERRUPTS);
        for irq in [24, 37, 38, 39, 41] {
            proc_.write(&format!("irq/{irq}/smp_affinity_list"), "0\n");
        }
        proc_.write("1/comm", "init\n");
        proc_.write("200/comm", "sshd\n");
        proc_.write(
            "self/limits",
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max cpu time              unlimited            unlimited            seconds   \n\
             Max locked memory         unlimited            unlimited            bytes     \n",
        );
        for (name, value) in [
            ("net/core/busy_read", "50"),
            ("net/core/busy_poll", "50"),
            ("net/core/somaxconn", "4096"),
            ("net/core/rmem_max", "16777216"),
            ("net/core/wmem_max", "16777216"),
            ("net/ipv4/tcp_rmem", "4096\t131072\t16777216"),
            ("net/ipv4/tcp_wmem", "4096\t16384\t16777216"),
        ] {
            proc_.write(&format!("sys/{name}"), &format!("{value}\n"));
        }
        (sys, proc_)
    }

    fn config(sys: &TestDir, proc_: &TestDir, cores: &str) -> HostCheckConfig {
        let mut config = HostCheckConfig::new(cores.parse().unwrap())
            .with_roots(sys.path(), proc_.path())
            .with_iface("eth0")
            .with_mtu(9000);
        config.allowed_cpus = Some("0-3".parse().unwrap());
        config
    }

    fn status(report: &HostReport, name: &str) -> Status {
        report
            .get(name)
            .unwrap_or_else(|| panic!("no item {name}"))
            .status
    }

    #[test]
    fn a_tuned_machine_passes_every_check() {
        let (sys, proc_) = tuned_machine("tuned");
        let report = check_host(&config(&sys, &proc_, "1-3"));
        assert!(report.is_tuned(), "{report}");
        assert_eq!(report.exit_code(), 0);
        for item in &report.items {
            assert_eq!(item.status, Status::Ok, "{item:?}");
        }
        assert_eq!(report.get("mtu").unwrap().current, "eth0 9000");
        assert_eq!(
            report.get("nic-irqs").unwrap().current,
            "3 NIC interrupt(s), none routed to engine cores"
        );
        let text = report.to_string();
        assert!(text.contains("host is tuned"), "{text}");
        let mut out = Vec::new();
        report.write_warnings("turbo-dex", &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn an_untuned_machine_warns_with_fixes() {
        let (sys, proc_) = tuned_machine("untuned");
        sys.write(
            "devices/system/cpu/cpu2/cpufreq/scaling_governor",
            "powersave\n",
        );
        sys.write(
            "devices/system/cpu/cpu3/cpufreq/scaling_governor",
            "schedutil\n",
        );
        sys.write(
            "kernel/mm/transparent_hugepage/enabled",
            "[always] madvise never\n",
        );
        sys.write("class/net/eth0/mtu", "1500\n");
        proc_.write("irq/38/smp_affinity_list", "0-3\n");
        proc_.write("4242/comm", "irqbalance\n");
        proc_.write("sys/net/core/busy_read", "0\n");
        proc_.write("sys/net/ipv4/tcp_wmem", "4096 16384 4194304\n");
        proc_.write(
            "self/limits",
            "Max locked memory         8388608              8388608              bytes     \n",
        );
        let report = check_host(&config(&sys, &proc_, "1-3"));
        assert!(!report.is_tuned());
        assert_eq!(report.exit_code(), 1);

        let governor = report.get("governor").unwrap();
        assert_eq!(governor.status, Status::Warn);
        assert_eq!(
            governor.current,
            "performance on 1, powersave on 2, schedutil on 3"
        );
        assert!(
            governor
                .fix
                .contains("cpupower -c 2-3 frequency-set -g performance"),
            "{}",
            governor.fix
        );
        assert!(
            governor
                .fix
                .starts_with("scripts/tune-host.sh --cores 1-3 --iface eth0 --mtu 9000 --only cpu")
        );

        let thp = report.get("thp").unwrap();
        assert_eq!((thp.status, thp.current.as_str()), (Status::Warn, "always"));

        let irqbalance = report.get("irqbalance").unwrap();
        assert_eq!(irqbalance.status, Status::Warn);
        assert_eq!(irqbalance.current, "running (pid 4242)");

        let nic = report.get("nic-irqs").unwrap();
        assert_eq!(nic.status, Status::Warn);
        assert_eq!(
            nic.current,
            "1 of 3 NIC interrupt(s) may run on engine cores: 38 virtio2-input.0 -> 0-3"
        );
        assert_eq!(nic.recommended, "NIC interrupts on 0, off the engine cores");

        let mtu = report.get("mtu").unwrap();
        assert_eq!(
            (mtu.status, mtu.current.as_str()),
            (Status::Warn, "eth0 1500")
        );
        assert!(
            mtu.fix.contains("ip link set dev eth0 mtu 9000"),
            "{}",
            mtu.fix
        );

        let memlock = report.get("memlock").unwrap();
        assert_eq!(memlock.status, Status::Warn);
        assert_eq!(memlock.current, "soft 8 MiB, hard 8 MiB");
        assert!(memlock.fix.contains("LimitMEMLOCK=infinity"));

        assert_eq!(status(&report, "net.core.busy_read"), Status::Warn);
        assert_eq!(status(&report, "net.core.busy_poll"), Status::Ok);
        assert_eq!(status(&report, "net.ipv4.tcp_wmem"), Status::Warn);
        assert_eq!(status(&report, "net.ipv4.tcp_rmem"), Status::Ok);
        assert_eq!(status(&report, "cores"), Status::Ok);

        let warned = report
            .warnings()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>();
        assert_eq!(
            warned,
            [
                "governor",
                "irqbalance",
                "nic-irqs",
                "thp",
                "memlock",
                "mtu",
                "net.core.busy_read",
                "net.ipv4.tcp_wmem"
            ]
        );
        let mut out = Vec::new();
        report.write_warnings("dex-trader", &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 8, "{out}");
        assert!(
            out.lines().all(|l| l.starts_with("dex-trader: warning: ")),
            "{out}"
        );
        assert!(
            out.contains(
                "dex-trader: warning: thp: always (recommended: madvise (or never)); fix: "
            ),
            "{out}"
        );

        let table = report.to_string();
        assert!(table.contains("host is NOT tuned: 8 warning(s)"), "{table}");
        assert!(table.contains("to fix:"), "{table}");
    }

    #[test]
    fn missing_settings_are_unknown_not_failures() {
        let sys = TestDir::new("bare-sys");
        let proc_ = TestDir::new("bare-proc");
        sys.write("devices/system/cpu/online", "0-1\n");
        let mut config =
            HostCheckConfig::new("0-1".parse().unwrap()).with_roots(sys.path(), proc_.path());
        config.allowed_cpus = Some("0-1".parse().unwrap());
        let report = check_host(&config);
        assert!(report.is_tuned(), "{report}");
        assert_eq!(status(&report, "cores"), Status::Ok);
        let governor = report.get("governor").unwrap();
        assert_eq!(governor.status, Status::Unknown);
        assert!(governor.current.starts_with("no cpufreq on these cores"));
        for name in [
            "smt",
            "thp",
            "nic-irqs",
            "memlock",
            "mtu",
            "net.core.busy_read",
            "net.ipv4.tcp_rmem",
        ] {
            assert_eq!(status(&report, name), Status::Unknown, "{name}");
        }
        // irqbalance: an empty /proc lists no processes, so it is not running.
        assert_eq!(status(&report, "irqbalance"), Status::Ok);
    }

    #[test]
    fn bad_cores_smt_and_a_missing_interface_warn() {
        let (sys, proc_) = tuned_machine("cores");
        sys.write(
            "devices/system/cpu/cpu1/topology/thread_siblings_list",
            "1,3\n",
        );
        sys.write(
            "devices/system/cpu/cpu3/topology/thread_siblings_list",
            "1,3\n",
        );
        let mut config = config(&sys, &proc_, "1-3,9");
        config.allowed_cpus = Some("0-2".parse().unwrap());
        config.iface = Some("eth7".into());
        let report = check_host(&config);
        let cores = report.get("cores").unwrap();
        assert_eq!(cores.status, Status::Warn);
        assert!(
            cores.current.starts_with(
                "core 9 does not exist; this machine has cores 0-3; and core 3 not allowed"
            ),
            "{}",
            cores.current
        );
        assert_eq!(cores.fix, "pass --cores within 0-2");
        let smt = report.get("smt").unwrap();
        assert_eq!(smt.status, Status::Warn);
        assert_eq!(smt.current, "hyper-thread siblings among engine cores: 1+3");
        assert_eq!(smt.fix, "--cores 1-2,9 (one per physical core)");
        let mtu = report.get("mtu").unwrap();
        assert_eq!(mtu.status, Status::Warn);
        assert!(
            mtu.current
                .starts_with("interface eth7 does not exist; this machine has eth0, lo"),
            "{}",
            mtu.current
        );
        // No MSI vectors and no action names eth7: nothing to judge.
        assert_eq!(status(&report, "nic-irqs"), Status::Unknown);
    }

    #[test]
    fn all_cores_engine_leaves_no_room_for_interrupts() {
        let (sys, proc_) = tuned_machine("allcores");
        let report = check_host(&config(&sys, &proc_, "0-3"));
        let nic = report.get("nic-irqs").unwrap();
        assert_eq!(nic.status, Status::Warn);
        assert!(
            nic.recommended
                .contains("leave at least one core out of --cores")
        );
        assert!(nic.fix.starts_with("leave a core out of --cores"));
    }

    #[test]
    fn parses_proc_interrupts() {
        let lines = parse_interrupts(INTERRUPTS);
        assert_eq!(lines.len(), 5, "NMI/LOC/ERR are skipped");
        assert_eq!(lines[2].irq, 38);
        assert_eq!(lines[2].counts, vec![(0, 0), (1, 2427), (2, 0), (3, 0)]);
        assert_eq!(
            lines[2].description,
            "PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0"
        );
        // Offline CPUs have no column: the header decides the ids.
        let sparse = parse_interrupts("   CPU0  CPU2\n 5:  7  9  IO-APIC 5-edge eth0-TxRx-0\n");
        assert_eq!(sparse[0].counts, vec![(0, 7), (2, 9)]);
        assert!(parse_interrupts("").is_empty());
        assert!(parse_interrupts("garbage\n x: y\n").is_empty());
    }

    #[test]
    fn finds_nic_interrupts_by_name_without_sysfs() {
        let sys = TestDir::new("nic-names");
        let lines = parse_interrupts(
            "  CPU0 CPU1\n\
             40: 1 2 PCI-MSI 1-edge eth0-TxRx-0\n\
             41: 1 2 PCI-MSI 2-edge eth0-TxRx-1\n\
             42: 1 2 PCI-MSI 3-edge mlx5_comp0@pci:0000:3b:00.0\n\
             43: 1 2 PCI-MSI 4-edge virtio1-req.0\n\
             44: 1 2 PCI-MSI 5-edge virtio2-input.0\n\
             45: 1 2 PCI-MSI 6-edge ens5-Tx-Rx-0\n\
             46: 1 2 PCI-MSI 7-edge eth10-TxRx-0\n",
        );
        let irqs = |iface| {
            nic_interrupts(sys.path(), &lines, iface)
                .iter()
                .map(|l| l.irq)
                .collect::<Vec<_>>()
        };
        assert_eq!(irqs(Some("eth0")), vec![40, 41]);
        assert_eq!(irqs(None), vec![40, 41, 42, 44, 45, 46]);
        assert!(is_virtio_net_queue("virtio12-output.3"));
        assert!(!is_virtio_net_queue("virtio2-input"));
        assert!(!is_virtio_net_queue("virtio-input.1"));
    }

    #[test]
    fn reads_memlock_and_processes_from_fake_proc() {
        let proc_ = TestDir::new("limits");
        proc_.write(
            "self/limits",
            "Max locked memory         65536                unlimited            bytes\n",
        );
        assert_eq!(
            memlock_from_proc(proc_.path()).unwrap(),
            MemlockLimit {
                soft_bytes: 65536,
                hard_bytes: MEMLOCK_UNLIMITED
            }
        );
        proc_.write("self/limits", "Max locked memory  lots\n");
        assert_eq!(
            memlock_from_proc(proc_.path()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        proc_.write("7/comm", "irqbalance\n");
        proc_.write("12/comm", "irqbalance\n");
        proc_.write("13/comm", "irqbalancer\n");
        proc_.write("self/comm", "irqbalance\n");
        assert_eq!(
            processes_named(proc_.path(), "irqbalance").unwrap(),
            vec![7, 12]
        );
        // The real /proc/self/limits parses too.
        assert!(memlock_from_proc(Path::new("/proc")).is_ok());
    }

    #[test]
    fn memlock_soft_below_but_hard_enough_is_ok() {
        let (sys, proc_) = tuned_machine("memlock");
        proc_.write(
            "self/limits",
            "Max locked memory         65536                unlimited            bytes\n",
        );
        let report = check_host(&config(&sys, &proc_, "1-3"));
        let item = report.get("memlock").unwrap();
        assert_eq!(item.status, Status::Ok);
        assert!(item.current.contains("raises the soft limit itself"));
    }

    #[test]
    fn bracketed_choice() {
        assert_eq!(bracketed("always [madvise] never"), Some("madvise"));
        assert_eq!(bracketed("[always] madvise never"), Some("always"));
        assert_eq!(bracketed("always madvise never"), None);
    }

    #[test]
    fn this_machine_can_be_checked() {
        let cores = crate::cpu::allowed_cpus().unwrap();
        let report = check_host(&HostCheckConfig::new(cores).with_iface("lo"));
        assert_eq!(status(&report, "cores"), Status::Ok);
        assert_eq!(report.items.len(), 15);
        assert!(report.to_string().lines().count() >= 16);
    }
}
