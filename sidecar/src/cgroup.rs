//! The CPU limit of the container the proxy runs in, from its cgroup: v2
//! `cpu.max` (`<quota> <period>` or `max <period>`), v1
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota `-1`: none). A limit set
//! on any ancestor cgroup applies too, so the smallest one on the way up to
//! the hierarchy's mount wins. The proxy runs one serving thread per whole
//! CPU it may use ([`workers_for`]): a pod limited to 1.5 CPUs gets one
//! thread, as a thread more than the quota only gets throttled.
//!
//! Everything is read below a root directory (`/` in production, a sample
//! tree in tests): `proc/self/cgroup` says which cgroup the process is in,
//! `proc/self/mountinfo` where each hierarchy is mounted.

use std::fmt;
use std::path::{Path, PathBuf};

/// A CPU limit and the file that set it.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuLimit {
    /// CPUs' worth of time per period (`quota / period`).
    pub cpus: f64,
    pub file: PathBuf,
}

impl fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} CPUs ({})", self.cpus, self.file.display())
    }
}

/// The limit of this process's cgroup, if it has one.
pub fn cpu_limit() -> Option<CpuLimit> {
    cpu_limit_under(Path::new("/"))
}

/// Serving threads for `limit` on a machine where `available` CPUs may run
/// this process: one per whole CPU of the limit, at least one, no more than
/// `available`.
pub fn workers_for(limit: Option<f64>, available: usize) -> usize {
    let available = available.max(1);
    match limit {
        Some(cpus) if cpus.is_finite() && cpus > 0.0 => (cpus.floor() as usize).clamp(1, available),
        _ => available,
    }
}

/// `cpu.max`: `<quota> <period>`; `max` means no limit.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period = fields.next().unwrap_or("100000");
    if quota == "max" {
        return None;
    }
    ratio(quota, period)
}

/// `cpu.cfs_quota_us` and `cpu.cfs_period_us`; a quota of `-1` means no limit.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    ratio(quota.trim(), period.trim())
}

fn ratio(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.parse().ok()?;
    let period: i64 = period.parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// [`cpu_limit`] with every path below `root`.
pub fn cpu_limit_under(root: &Path) -> Option<CpuLimit> {
    let cgroups = std::fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    let mounts = std::fs::read_to_string(root.join("proc/self/mountinfo")).ok()?;
    let mut found: Option<CpuLimit> = None;
    for line in cgroups.lines() {
        // `<id>:<controllers>:<path>`; v2 is `0::<path>`.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let v2 = id == "0" && controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "cpu") {
            continue;
        }
        let Some((mount_root, mount_point)) = find_mount(&mounts, v2) else {
            continue;
        };
        let relative = path.strip_prefix(mount_root.as_str()).unwrap_or(path);
        let top = root.join(mount_point.trim_start_matches('/'));
        let mut dir = top.join(relative.trim_start_matches('/'));
        // This cgroup and each ancestor up to the mount: the smallest limit wins.
        loop {
            let limit = if v2 {
                read(&dir.join("cpu.max")).and_then(|t| parse_cpu_max(&t))
            } else {
                let quota = read(&dir.join("cpu.cfs_quota_us"));
                let period = read(&dir.join("cpu.cfs_period_us"));
                quota.zip(period).and_then(|(q, p)| parse_cfs(&q, &p))
            };
            if let Some(cpus) = limit
                && found.as_ref().is_none_or(|f| cpus < f.cpus)
            {
                let file = if v2 { "cpu.max" } else { "cpu.cfs_quota_us" };
                found = Some(CpuLimit {
                    cpus,
                    file: dir.join(file),
                });
            }
            if dir == top || !dir.pop() || !dir.starts_with(&top) {
                break;
            }
        }
    }
    found
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `(root, mount point)` of the cgroup2 hierarchy (`v2`), or of the v1
/// hierarchy that has the `cpu` controller.
fn find_mount(mountinfo: &str, v2: bool) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        // `<id> <parent> <dev> <root> <mount point> <options> ... - <fstype> <source> <super options>`
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let super_options = right.nth(1).unwrap_or("");
        let wanted = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && super_options.split(',').any(|o| o == "cpu")
        };
        wanted.then(|| (root.to_string(), point.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample root: files at paths relative to it.
    struct Tree(PathBuf);

    impl Tree {
        fn new(files: &[(&str, &str)]) -> Tree {
            let dir = std::env::temp_dir().join(format!(
                "trellis-cgroup-{}-{:x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            for (path, text) in files {
                let path = dir.join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            Tree(dir)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const V2_MOUNTS: &str = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
    const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpuset
";

    #[test]
    fn parses_cpu_max_and_cfs_files() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("250000 100000"), Some(2.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs("150000\n", "100000\n"), Some(1.5));
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("100000", "0"), None);
    }

    #[test]
    fn one_thread_per_whole_cpu_of_the_limit() {
        assert_eq!(workers_for(None, 8), 8);
        assert_eq!(workers_for(Some(0.25), 8), 1);
        assert_eq!(workers_for(Some(1.5), 8), 1);
        assert_eq!(workers_for(Some(2.0), 8), 2);
        assert_eq!(workers_for(Some(16.0), 8), 8);
        assert_eq!(workers_for(Some(3.0), 0), 1);
    }

    #[test]
    fn reads_a_v2_limit_in_a_container() {
        // A container's own cgroup namespace: the cgroup is the mount's root.
        let t = Tree::new(&[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/self/mountinfo", V2_MOUNTS),
            ("sys/fs/cgroup/cpu.max", "150000 100000\n"),
        ]);
        let limit = cpu_limit_under(&t.0).unwrap();
        assert_eq!(limit.cpus, 1.5);
        assert_eq!(limit.file, t.0.join("sys/fs/cgroup/cpu.max"));
    }

    #[test]
    fn a_tighter_ancestor_wins_and_max_is_no_limit() {
        let t = Tree::new(&[
            ("proc/self/cgroup", "0::/kubepods/pod1/proxy\n"),
            ("proc/self/mountinfo", V2_MOUNTS),
            ("sys/fs/cgroup/kubepods/pod1/proxy/cpu.max", "max 100000\n"),
            ("sys/fs/cgroup/kubepods/pod1/cpu.max", "50000 100000\n"),
            ("sys/fs/cgroup/kubepods/cpu.max", "400000 100000\n"),
        ]);
        let limit = cpu_limit_under(&t.0).unwrap();
        assert_eq!(limit.cpus, 0.5);
        assert_eq!(limit.file, t.0.join("sys/fs/cgroup/kubepods/pod1/cpu.max"));
        let none = Tree::new(&[
            ("proc/self/cgroup", "0::/a\n"),
            ("proc/self/mountinfo", V2_MOUNTS),
            ("sys/fs/cgroup/a/cpu.max", "max 100000\n"),
        ]);
        assert_eq!(cpu_limit_under(&none.0), None);
    }

    #[test]
    fn reads_a_v1_cfs_quota() {
        let t = Tree::new(&[
            (
                "proc/self/cgroup",
                "12:cpuset:/\n4:cpu,cpuacct:/kubepods/pod2/c1\n1:name=systemd:/x\n",
            ),
            ("proc/self/mountinfo", V1_MOUNTS),
            (
                "sys/fs/cgroup/cpu,cpuacct/kubepods/pod2/c1/cpu.cfs_quota_us",
                "200000\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/kubepods/pod2/c1/cpu.cfs_period_us",
                "100000\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/kubepods/pod2/cpu.cfs_quota_us",
                "-1\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/kubepods/pod2/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        let limit = cpu_limit_under(&t.0).unwrap();
        assert_eq!(limit.cpus, 2.0);
        assert_eq!(
            limit.file,
            t.0.join("sys/fs/cgroup/cpu,cpuacct/kubepods/pod2/c1/cpu.cfs_quota_us")
        );
    }

    #[test]
    fn no_cgroup_files_no_limit() {
        let t = Tree::new(&[("proc/self/cgroup", "0::/\n")]);
        assert_eq!(cpu_limit_under(&t.0), None);
        let empty = Tree::new(&[]);
        assert_eq!(cpu_limit_under(&empty.0), None);
        // A v1 hierarchy without the cpu controller says nothing about CPU.
        let t = Tree::new(&[
            ("proc/self/cgroup", "12:cpuset:/\n"),
            ("proc/self/mountinfo", V1_MOUNTS),
        ]);
        assert_eq!(cpu_limit_under(&t.0), None);
    }
}
