//! Tests of scripts/tune-host.sh: argument errors, `--dry-run` and
//! `--check` changing nothing (in fake trees and on this host), apply,
//! re-apply and undo in fake /sys and /proc trees, and apply/undo of the
//! MTU and network sysctls on a veth pair between two network namespaces
//! that the test creates and always removes.
//!
//! Fake trees are private to their test. The two tests that touch the real
//! machine (the on-this-host check, which compares host state before and
//! after, and the namespace test, which creates namespaces and runs the
//! script in the host's namespace) hold `testkit::real_host_lock()`, so
//! neither runs while the other, in this or another test process, does.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tuning::host::{DEFAULT_MEMLOCK_MIN_BYTES, recommended};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tune-host.sh")
}

fn run(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("bash runs")
}

use testkit::{TempDir, missing, output_text as text, real_host_lock};

/// Every file under `root` with its value as the kernel would show it: a
/// fake file holds exactly what was written, so runs of whitespace are
/// squeezed (the script writes `4096 131072 6291456` where the kernel shows
/// tabs) and a choice file shows the choice (`always`, where the kernel
/// shows `[always] madvise never` after that write).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let normalize = |text: &str| {
        let text = match (text.find('['), text.find(']')) {
            (Some(open), Some(close)) if open < close => &text[open + 1..close],
            _ => text,
        };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                files.insert(path.clone(), normalize(&text));
            }
        }
    }
    files
}

/// A fake machine with 4 CPUs, nothing tuned: engine cores 1-3 will need
/// every group changed. `sys/`, `proc/`, `limits/` and `state` live in it.
fn untuned_host(name: &str) -> TempDir {
    let host = TempDir::new(name);
    host.write("sys/devices/system/cpu/online", "0-3\n");
    for cpu in 0..4 {
        let dir = format!("sys/devices/system/cpu/cpu{cpu}/cpufreq");
        host.write(&format!("{dir}/scaling_governor"), "powersave\n");
        host.write(
            &format!("{dir}/scaling_available_governors"),
            "performance powersave\n",
        );
    }
    host.write(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never\n",
    );
    host.write("sys/class/net/eth0/mtu", "1500\n");
    host.write("sys/class/net/eth0/device/msi_irqs/40", "msix\n");
    host.write("sys/class/net/eth0/device/msi_irqs/41", "msix\n");
    host.write("sys/class/net/lo/mtu", "65536\n");
    host.write(
        "proc/interrupts",
        "        CPU0  CPU1  CPU2  CPU3\n\
         24:     1     0     0     0  IO-APIC 5-edge ACPI:Ged\n\
         40:     9     0     7     0  PCI-MSIX 0-edge eth0-TxRx-0\n\
         41:     0     3     0     0  PCI-MSIX 1-edge eth0-TxRx-1\n\
         42:     0     0     0     1  PCI-MSIX 2-edge eth0-TxRx-2\n",
    );
    host.write("proc/irq/24/smp_affinity_list", "0-3\n");
    host.write("proc/irq/40/smp_affinity_list", "0-3\n");
    host.write("proc/irq/41/smp_affinity_list", "1\n");
    // 42 is found by its action name; its affinity is already off the engine cores.
    host.write("proc/irq/42/smp_affinity_list", "0\n");
    host.write("proc/1/comm", "init\n");
    for (name, value) in [
        ("net/core/busy_read", "0"),
        ("net/core/busy_poll", "0"),
        ("net/core/somaxconn", "8192"),
        ("net/core/rmem_max", "212992"),
        ("net/core/wmem_max", "212992"),
        ("net/ipv4/tcp_rmem", "4096\t131072\t6291456"),
        ("net/ipv4/tcp_wmem", "4096\t65536\t4194304"),
    ] {
        host.write(&format!("proc/sys/{name}"), &format!("{value}\n"));
    }
    std::fs::create_dir_all(host.join("limits")).unwrap();
    host
}

fn fake_args<'a>(host: &'a TempDir, args: &[&'a str]) -> Vec<String> {
    let mut all = args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (flag, path) in [
        ("--sysfs", "sys"),
        ("--procfs", "proc"),
        ("--limits-dir", "limits"),
        ("--state", "state/tune-host.state"),
    ] {
        all.push(flag.to_string());
        all.push(host.str(path));
    }
    all
}

fn run_fake(host: &TempDir, args: &[&str]) -> Output {
    let all = fake_args(host, args);
    run(&all.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn script_is_shellcheck_clean() {
    if let Some(why) = missing(false, &["shellcheck"]) {
        testkit::skip!("{why}");
        return;
    }
    let output = Command::new("shellcheck").arg(script()).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn help_names_every_option() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = text(&output);
    for option in [
        "--cores",
        "--iface",
        "--mtu",
        "--dry-run",
        "--check",
        "--undo",
        "--state",
        "--only",
        "--sysfs",
        "--procfs",
        "--limits-dir",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
}

/// The script and tuning::host::recommended must not drift apart: check-host
/// would then warn about what the script just set.
#[test]
fn script_values_match_the_crate() {
    let source = std::fs::read_to_string(script()).unwrap();
    let value = |name: &str| -> String {
        let prefix = format!("{name}=");
        let line = source
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{name} not set in the script"));
        line[prefix.len()..].trim_matches('"').to_string()
    };
    let triple = |t: [u64; 3]| format!("{} {} {}", t[0], t[1], t[2]);
    assert_eq!(value("RECOMMENDED_GOVERNOR"), recommended::GOVERNOR);
    assert_eq!(value("RECOMMENDED_THP"), recommended::THP);
    assert_eq!(
        value("RECOMMENDED_BUSY_READ_US"),
        recommended::BUSY_READ_US.to_string()
    );
    assert_eq!(
        value("RECOMMENDED_BUSY_POLL_US"),
        recommended::BUSY_POLL_US.to_string()
    );
    assert_eq!(
        value("RECOMMENDED_SOMAXCONN"),
        recommended::SOMAXCONN.to_string()
    );
    assert_eq!(
        value("RECOMMENDED_RMEM_MAX_BYTES"),
        recommended::RMEM_MAX_BYTES.to_string()
    );
    assert_eq!(
        value("RECOMMENDED_WMEM_MAX_BYTES"),
        recommended::WMEM_MAX_BYTES.to_string()
    );
    assert_eq!(value("RECOMMENDED_TCP_RMEM"), triple(recommended::TCP_RMEM));
    assert_eq!(value("RECOMMENDED_TCP_WMEM"), triple(recommended::TCP_WMEM));
    assert_eq!(
        value("MEMLOCK_MIN_KIB").parse::<u64>().unwrap() * 1024,
        DEFAULT_MEMLOCK_MIN_BYTES
    );
    assert_eq!(value("CPU_ID_LIMIT"), tuning::CPU_ID_LIMIT.to_string());
}

#[test]
fn bad_arguments_are_clear_errors() {
    let host = untuned_host("args");
    let cases: &[(&[&str], &str)] = &[
        (&["--check"], "--cores LIST is required"),
        (
            &["--cores", "9", "--check"],
            "core 9 does not exist; this machine has cores 0-3",
        ),
        (
            &["--cores", "2-6", "--check"],
            "cores 4-6 do not exist; this machine has cores 0-3",
        ),
        (&["--cores", "1,x", "--check"], "bad CPU list item \"x\""),
        (&["--cores", "3-1", "--check"], "write it as 1-3"),
        (
            &["--cores", "0-3:0", "--check"],
            "stride after ':' must be at least 1",
        ),
        (&["--cores", "0,", "--check"], "empty item"),
        (
            &["--cores", "99999999999", "--check"],
            "CPU ids are below 8192",
        ),
        (
            &["--cores", "1", "--only", "cpu,gpu"],
            "unknown group 'gpu'",
        ),
        (
            &["--cores", "1", "--mtu", "jumbo"],
            "--mtu jumbo: give a number of bytes",
        ),
        (&["--cores", "1", "--mtu", "70000"], "from 68 to 65536"),
        (
            &["--cores", "1", "--iface", "a/b"],
            "is not an interface name",
        ),
        (
            &["--cores", "1", "--frobnicate"],
            "unknown argument '--frobnicate'",
        ),
        (&["--cores", "1", "--check", "--undo"], "do not go together"),
        (&["--cores"], "--cores needs a value"),
    ];
    for (args, expected) in cases {
        let output = run_fake(&host, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let message = text(&output);
        assert!(
            message.contains(expected),
            "{args:?}: wanted {expected:?} in {message}"
        );
    }
    // Whitespace and strides are fine.
    let output = run_fake(
        &host,
        &["--cores", " 1 - 3 : 2 ", "--check", "--only", "thp"],
    );
    assert!(
        text(&output).contains("engine cores 1,3; other cores: 0,2"),
        "{}",
        text(&output)
    );
}

#[test]
fn dry_run_and_check_change_nothing_in_a_fake_tree() {
    let host = untuned_host("dry");
    host.write("proc/4321/comm", "irqbalance\n");
    let before = snapshot(host.path());
    let all = ["--cores", "1-3", "--iface", "eth0", "--mtu", "9000"];

    let dry = run_fake(&host, &[&all[..], &["--dry-run"]].concat());
    let out = text(&dry);
    assert!(dry.status.success(), "{out}");
    for line in [
        "change   cpu1 governor                  powersave -> performance",
        "change   cpu3 governor                  powersave -> performance",
        "change   irqbalance                     running (pid 4321) -> stopped",
        "change   irq 40 affinity                0-3 -> 0",
        "change   irq 41 affinity                1 -> 0",
        "ok       irq 42 affinity                0",
        "change   thp                            always -> madvise",
        "change   net.core.busy_read             0 -> 50",
        "ok       net.core.somaxconn             8192",
        "change   net.core.rmem_max              212992 -> 16777216",
        "change   net.ipv4.tcp_rmem              4096 131072 6291456 -> 4096 131072 16777216",
        "change   net.ipv4.tcp_wmem              4096 65536 4194304 -> 4096 65536 16777216",
        "change   mtu eth0                       1500 -> 9000",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(
        !out.contains("cpu0 governor"),
        "cpu0 is not an engine core:\n{out}"
    );
    assert!(!out.contains("irq 24"), "IRQ 24 is not the NIC's:\n{out}");

    let check = run_fake(&host, &[&all[..], &["--check"]].concat());
    let out = text(&check);
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(
        out.contains("WARN     cpu2 governor                  powersave"),
        "{out}"
    );
    assert!(
        out.contains("WARN     irqbalance                     running (pid 4321)"),
        "{out}"
    );
    assert!(out.contains("ok       net.core.somaxconn"), "{out}");
    assert!(out.contains("host is NOT tuned"), "{out}");

    assert_eq!(
        snapshot(host.path()),
        before,
        "dry-run or check changed a file"
    );
    assert!(!host.join("state").exists());
}

#[test]
fn apply_reapply_and_undo_in_a_fake_tree() {
    let host = untuned_host("apply");
    let before = snapshot(host.path());
    let all = ["--cores", "1-3", "--iface", "eth0", "--mtu", "9000"];

    let apply = run_fake(&host, &all);
    let out = text(&apply);
    assert!(apply.status.success(), "{out}");
    assert!(
        out.contains("changed  cpu1 governor                  powersave -> performance"),
        "{out}"
    );
    for cpu in 1..4 {
        assert_eq!(
            host.read(&format!(
                "sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
            )),
            "performance"
        );
    }
    assert_eq!(
        host.read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "powersave"
    );
    assert_eq!(
        host.read("sys/kernel/mm/transparent_hugepage/enabled"),
        "madvise"
    );
    assert_eq!(host.read("proc/irq/40/smp_affinity_list"), "0");
    assert_eq!(host.read("proc/irq/41/smp_affinity_list"), "0");
    assert_eq!(host.read("proc/irq/24/smp_affinity_list"), "0-3");
    assert_eq!(host.read("proc/sys/net/core/busy_read"), "50");
    assert_eq!(host.read("proc/sys/net/core/busy_poll"), "50");
    assert_eq!(
        host.read("proc/sys/net/core/somaxconn"),
        "8192",
        "never lowered"
    );
    assert_eq!(host.read("proc/sys/net/core/rmem_max"), "16777216");
    assert_eq!(
        host.read("proc/sys/net/ipv4/tcp_wmem"),
        "4096 65536 16777216"
    );
    assert_eq!(host.read("sys/class/net/eth0/mtu"), "9000");
    let dropin = host.read("limits/90-turbo-dex-memlock.conf");
    assert!(
        dropin.contains("*       -       memlock unlimited"),
        "{dropin}"
    );
    let state = host.read("state/tune-host.state");
    assert!(
        state.contains(&format!(
            "file\t{}\tpowersave",
            host.str("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor")
        )),
        "{state}"
    );
    assert!(state.contains("\t4096 131072 6291456"), "{state}");

    // Everything the script checks is now as recommended (memlock is the
    // running shell's limit, which only a new login changes).
    let check = run_fake(
        &host,
        &[&all[..], &["--check", "--only", "cpu,irq,thp,net,mtu"]].concat(),
    );
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    // Re-running changes nothing and keeps the saved originals, even after
    // something was put back by hand in between.
    host.write(
        "sys/devices/system/cpu/cpu2/cpufreq/scaling_governor",
        "schedutil\n",
    );
    let again = run_fake(&host, &all);
    let out = text(&again);
    assert!(again.status.success(), "{out}");
    assert!(
        out.contains("ok       net.core.busy_read             50"),
        "{out}"
    );
    assert!(
        out.contains("changed  cpu2 governor                  schedutil -> performance"),
        "{out}"
    );
    assert_eq!(
        host.read("state/tune-host.state"),
        state,
        "the originals were overwritten"
    );

    let undo = run_fake(&host, &["--undo"]);
    let out = text(&undo);
    assert!(undo.status.success(), "{out}");
    assert!(out.contains("removed  "), "{out}");
    let mut after = snapshot(host.path());
    // apply created the state directory; undo removes the file, not the directory.
    after.retain(|path, _| !path.starts_with(host.join("state")));
    assert_eq!(after, before, "undo did not restore every file");
    assert!(!host.join("state/tune-host.state").exists());

    let nothing = run_fake(&host, &["--undo"]);
    assert!(nothing.status.success());
    assert!(text(&nothing).contains("nothing to undo"));
}

#[test]
fn missing_settings_are_skipped_with_a_reason_and_the_rest_applies() {
    let host = TempDir::new("bare");
    host.write("sys/devices/system/cpu/online", "0-1\n");
    host.write("proc/sys/net/core/somaxconn", "128\n");
    let output = run_fake(&host, &["--cores", "1", "--iface", "eth9", "--mtu", "9000"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    for line in [
        "skip     governor                       no cpufreq on cores 1",
        "skip     nic irqs                       interface eth9 does not exist",
        "skip     thp                            no ",
        "skip     net.core.busy_read             not in this kernel or network namespace",
        "changed  net.core.somaxconn             128 -> 4096",
        "skip     memlock                        no ",
        "skip     mtu eth9                       interface eth9 does not exist",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert_eq!(host.read("proc/sys/net/core/somaxconn"), "4096");
    let check = run_fake(&host, &["--cores", "1", "--check", "--only", "cpu,thp,net"]);
    let out = text(&check);
    assert!(out.contains("unknown  governor"), "{out}");
    assert_eq!(
        check.status.code(),
        Some(0),
        "unknown items do not fail --check:\n{out}"
    );
}

/// Not root: each item says it could not be changed and why.
#[test]
fn not_root_gets_a_message_per_item() {
    if let Some(why) = missing(true, &["setpriv"]) {
        testkit::skip!("{why}, to run the script as an unprivileged user");
        return;
    }
    let host = untuned_host("nonroot");
    let state_dir = host.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    // The unprivileged user may write the state but nothing else.
    Command::new("chmod")
        .args(["-R", "a+rX", host.path().to_str().unwrap()])
        .status()
        .unwrap();
    Command::new("chmod")
        .args(["a+rwx", state_dir.to_str().unwrap()])
        .status()
        .unwrap();
    let before = snapshot(&host.join("sys"));
    let args = fake_args(&host, &["--cores", "1-3", "--only", "cpu,thp,net"]);
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
        .arg(script())
        .args(&args)
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("note: not root"), "{out}");
    assert!(out.contains("FAILED   cpu1 governor"), "{out}");
    assert!(
        out.contains("Permission denied (not root: run with sudo)"),
        "{out}"
    );
    assert!(out.contains("FAILED   thp"), "{out}");
    assert!(out.contains("FAILED   net.core.busy_read"), "{out}");
    assert!(out.contains("could not be changed"), "{out}");
    assert_eq!(snapshot(&host.join("sys")), before);
}

/// The real /sys and /proc: `--check` and `--dry-run` read them and must
/// not write anything.
#[test]
fn dry_run_and_check_change_nothing_on_this_host() {
    // The namespace test below changes the host (namespaces, veth pairs)
    // and runs the script in the host's namespace: not while this one
    // compares the host before and after.
    let _host = real_host_lock();
    let watched = || {
        let mut values = BTreeMap::new();
        let mut add = |path: PathBuf| {
            if let Ok(value) = std::fs::read_to_string(&path) {
                values.insert(path, value);
            }
        };
        for name in [
            "net/core/busy_read",
            "net/core/busy_poll",
            "net/core/somaxconn",
            "net/core/rmem_max",
            "net/core/wmem_max",
            "net/ipv4/tcp_rmem",
            "net/ipv4/tcp_wmem",
        ] {
            add(Path::new("/proc/sys").join(name));
        }
        add("/sys/kernel/mm/transparent_hugepage/enabled".into());
        for dir in ["/sys/devices/system/cpu", "/proc/irq", "/sys/class/net"] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                add(path.join("cpufreq/scaling_governor"));
                add(path.join("smp_affinity_list"));
                add(path.join("mtu"));
            }
        }
        values
    };
    let cores = tuning::allowed_cpus().unwrap();
    let core = cores.last().unwrap().to_string();
    let iface = tuning::mtu::interfaces(Path::new("/sys"))
        .unwrap()
        .into_iter()
        .find(|name| name != "lo")
        .unwrap_or_else(|| "lo".to_string());
    let scratch = TempDir::new("real");
    let before = watched();
    assert!(!before.is_empty());
    for mode in ["--check", "--dry-run"] {
        let output = run(&[
            "--cores",
            &core,
            "--iface",
            &iface,
            "--mtu",
            "9000",
            mode,
            "--state",
            &scratch.str("state"),
            "--limits-dir",
            &scratch.str("limits"),
        ]);
        let code = output.status.code();
        assert!(
            code == Some(0) || code == Some(1),
            "{mode}: {}",
            text(&output)
        );
        assert!(text(&output).contains(&format!("engine cores {core}")));
    }
    assert_eq!(watched(), before, "--check or --dry-run changed the host");
    assert!(!scratch.join("state").exists());
    assert!(!scratch.join("limits").exists());
}

/// Two network namespaces joined by a veth pair, removed on drop (deleting
/// a namespace deletes the veth end in it).
struct VethPair {
    namespaces: [String; 2],
    ifaces: [String; 2],
}

impl VethPair {
    fn new() -> VethPair {
        // Interface names have at most 15 bytes: "tdxa" and 5 digits.
        let id = std::process::id() % 100_000;
        let pair = VethPair {
            namespaces: [format!("tdx-test-a-{id}"), format!("tdx-test-b-{id}")],
            ifaces: [format!("tdxa{id}"), format!("tdxb{id}")],
        };
        for ns in &pair.namespaces {
            // A leftover of a killed run whose pid ended the same way.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
        }
        ip(&[
            "link",
            "add",
            &pair.ifaces[0],
            "netns",
            &pair.namespaces[0],
            "type",
            "veth",
            "peer",
            "name",
            &pair.ifaces[1],
            "netns",
            &pair.namespaces[1],
        ]);
        for (i, (ns, iface)) in pair.namespaces.iter().zip(&pair.ifaces).enumerate() {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.213.0.{}/24", i + 1),
                "dev",
                iface,
            ]);
            ip(&["-n", ns, "link", "set", iface, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    fn mtu(&self, side: usize) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[side], "cat"])
            .arg(format!("/sys/class/net/{}/mtu", self.ifaces[side]))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn read_in(&self, side: usize, path: &str) -> Option<String> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[side], "cat", path])
            .output()
            .unwrap();
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Runs the script inside namespace `side`.
    fn script(&self, side: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.namespaces[side], "bash"])
            .arg(script())
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap();
    assert!(output.status.success(), "ip {args:?}: {}", text(&output));
}

/// Runs `f` on a thread that has joined network namespace `ns`.
fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: file is an open namespace fd; setns changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

#[test]
fn apply_and_undo_mtu_and_net_sysctls_in_a_network_namespace() {
    if let Some(why) = missing(true, &["ip"]) {
        testkit::skip!("{why}, to create a netns and veth pair");
        return;
    }
    let _host = real_host_lock();
    let host_net = || {
        [
            "net/core/rmem_max",
            "net/core/wmem_max",
            "net/core/somaxconn",
            "net/core/busy_read",
            "net/ipv4/tcp_wmem",
        ]
        .map(|name| std::fs::read_to_string(Path::new("/proc/sys").join(name)).ok())
    };
    let host_before = host_net();
    let pair = VethPair::new();
    let scratch = TempDir::new("netns");
    let core = tuning::allowed_cpus().unwrap().first().unwrap().to_string();
    assert_eq!(pair.mtu(0), "1500");
    const NET_SYSCTLS: [&str; 7] = [
        "net.core.busy_read",
        "net.core.busy_poll",
        "net.core.somaxconn",
        "net.core.rmem_max",
        "net.core.wmem_max",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    ];
    let netns_net = |side: usize| {
        NET_SYSCTLS.map(|name| pair.read_in(side, &format!("/proc/sys/{}", name.replace('.', "/"))))
    };
    let netns_before = [netns_net(0), netns_net(1)];

    for (side, before) in netns_before.iter().enumerate() {
        let state = scratch.str(&format!("state-{side}"));
        let output = pair.script(
            side,
            &[
                "--cores",
                &core,
                "--iface",
                &pair.ifaces[side],
                "--mtu",
                "9000",
                "--only",
                "mtu,net",
                "--state",
                &state,
            ],
        );
        let out = text(&output);
        assert!(output.status.success(), "{out}");
        let changed = format!("changed  mtu {:<26} 1500 -> 9000", pair.ifaces[side]);
        assert!(out.contains(&changed), "missing {changed:?} in\n{out}");
        assert_eq!(pair.mtu(side), "9000");
        // Sysctls a namespace does not have (busy_read is global) are skipped, not changed.
        if pair.read_in(side, "/proc/sys/net/core/busy_read").is_none() {
            assert!(out.contains("skip     net.core.busy_read             not in this kernel or network namespace"), "{out}");
        }
        // Each namespace sysctl was either changed (and is now different)
        // or skipped with a reason (and is unchanged).
        let now = netns_net(side);
        for (i, name) in NET_SYSCTLS.iter().enumerate() {
            let changed = out.contains(&format!("changed  {name:<30} "));
            let kept = out.contains(&format!("ok       {name:<30} "))
                || out.contains(&format!("skip     {name:<30} "));
            assert!(
                changed != kept,
                "{name}: neither or both changed and kept:\n{out}"
            );
            assert_eq!(changed, now[i] != before[i], "{name}:\n{out}");
        }
    }
    assert_eq!(
        host_net(),
        host_before,
        "the netns apply changed the host's sysctls"
    );

    // Jumbo frames end to end: a TCP connection over the veth pair gets
    // MTU 9000 and an MSS of 9000 - 20 - 20 - 12 (timestamps) = 8948.
    let server = in_namespace(&pair.namespaces[1], || {
        let listener =
            tuning::listen_reuseport(SocketAddr::from((Ipv4Addr::new(10, 213, 0, 2), 0)), 4)
                .unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    })
    .join()
    .unwrap();
    let (listener, port) = server;
    let accept = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = vec![0u8; 20_000];
        stream.read_exact(&mut buffer).unwrap();
        stream.write_all(b"k").unwrap();
    });
    let iface_a = pair.ifaces[0].clone();
    let (mtu, mss, iface) = in_namespace(&pair.namespaces[0], move || {
        let mut stream = TcpStream::connect((Ipv4Addr::new(10, 213, 0, 2), port)).unwrap();
        stream.write_all(&vec![7u8; 20_000]).unwrap();
        let mut k = [0u8; 1];
        stream.read_exact(&mut k).unwrap();
        let fd = stream.as_raw_fd();
        let iface = tuning::interface_for_local_addr(stream.local_addr().unwrap().ip()).unwrap();
        (
            tuning::sock::ip_mtu(fd).unwrap(),
            tuning::tcp_max_segment(fd).unwrap(),
            iface,
        )
    })
    .join()
    .unwrap();
    accept.join().unwrap();
    assert_eq!(mtu, 9000);
    assert_eq!(mss, tuning::segment_payload_bytes(9000, false));
    assert_eq!(mss, 8948);
    assert_eq!(iface.as_deref(), Some(iface_a.as_str()));

    // An undo from the wrong namespace would write the namespace's
    // originals into the host's sysctls: refused.
    let wrong = run(&["--undo", "--state", &scratch.str("state-0")]);
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("was written in network namespace"),
        "{}",
        text(&wrong)
    );
    assert_eq!(pair.mtu(0), "9000");
    assert_eq!(host_net(), host_before);

    for side in 0..2 {
        let output = pair.script(
            side,
            &["--undo", "--state", &scratch.str(&format!("state-{side}"))],
        );
        let out = text(&output);
        assert!(output.status.success(), "{out}");
        assert!(out.contains("9000 -> 1500"), "{out}");
        assert_eq!(pair.mtu(side), "1500");
    }
    assert_eq!(
        [netns_net(0), netns_net(1)],
        netns_before,
        "undo left a namespace sysctl changed"
    );
    assert_eq!(host_net(), host_before);
}
