//! A Redis Cluster a test owns, node by node.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, signal, temp_dir, wait_until};

/// One node of an [`OwnCluster`].
pub struct ClusterNode {
    pub port: u16,
    /// The cluster bus port (set explicitly: the default, port + 10000, may be taken or out of range).
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            // A replica's first sync starts at once (the default waits 5 s for more replicas to join it).
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian: apt-get install redis-server)");
        self.child = Some(child);
        let url = format!("redis://127.0.0.1:{}", self.port);
        wait_until("a cluster node to answer", Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A plain connection to this node alone (no redirections followed).
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?.get_connection()
    }
}

/// A Redis Cluster of the test's own: three primaries and three replicas, each a `redis-server` with an
/// append-only file fsynced on every write, a node timeout of one second (so a failover takes seconds),
/// all killed on drop.
pub struct OwnCluster {
    pub nodes: Vec<ClusterNode>,
}

impl OwnCluster {
    pub fn start() -> Self {
        let mut nodes: Vec<ClusterNode> = (0..6)
            .map(|_| ClusterNode {
                port: free_port(),
                bus_port: free_port(),
                dir: temp_dir("cluster"),
                child: None,
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        let cluster = Self { nodes };
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (Debian: apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// `REDIS_URL` for Relay: every node as a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// A cluster connection (following redirections) for test set-up and checks.
    pub fn connection(&self) -> redis::cluster::ClusterConnection {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect();
        redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(5))
            .build()
            .and_then(|c| c.get_connection())
            .expect("connect to the cluster")
    }

    /// Waits until every running node says `cluster_state:ok` and every replica has synced with its
    /// primary (a replica that never synced refuses to be promoted: its data would be arbitrarily old).
    pub fn wait_ok(&self, limit: Duration) {
        wait_until(
            "the cluster to be ok and its replicas synced",
            limit,
            || {
                self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                    let Ok(mut c) = n.connection() else {
                        return false;
                    };
                    let ok = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query::<String>(&mut c)
                        .is_ok_and(|info| info.contains("cluster_state:ok"));
                    let synced = redis::cmd("INFO")
                        .arg("replication")
                        .query::<String>(&mut c)
                        .is_ok_and(|info| {
                            info.contains("role:master") || info.contains("master_link_status:up")
                        });
                    ok && synced
                })
            },
        );
    }

    /// The index of the node serving `key`'s slot as primary, as the running nodes see it (None while
    /// they disagree or none is known).
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let slot: u16 = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| {
                let mut c = n.connection().ok()?;
                redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query(&mut c)
                    .ok()
            })?;
        let mut seen = None;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let nodes: String = node
                .connection()
                .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query(&mut c))
                .ok()?;
            let port = nodes.lines().find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let serves = f.len() > 8
                    && f[2].contains("master")
                    && !f[2].contains("fail")
                    && f[8..].iter().any(|range| {
                        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                        matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
                    });
                serves.then(|| f[1].split([':', '@']).nth(1)?.parse::<u16>().ok())?
            })?;
            let index = self.nodes.iter().position(|n| n.port == port)?;
            if seen.is_some_and(|s| s != index) {
                return None;
            }
            seen = Some(index);
        }
        seen
    }

    /// `CLUSTER NODES` as each running node sees it: for a failure message.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| {
                let view = n
                    .connection()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c))
                    .unwrap_or_else(|e| e.to_string());
                let log = std::fs::read_to_string(n.dir.join("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("node {}:\n{view}\nlog:\n{}", n.port, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The index of a replica of the primary at `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let mut conn = self.nodes[primary].connection().unwrap();
        let id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut conn).unwrap();
        let replicas: Vec<String> = redis::cmd("CLUSTER")
            .arg("REPLICAS")
            .arg(&id)
            .query(&mut conn)
            .unwrap();
        let port: u16 = replicas
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|a| a.split([':', '@']).nth(1))
            .and_then(|p| p.parse().ok())
            .expect("the primary has a replica");
        self.nodes.iter().position(|n| n.port == port).unwrap()
    }

    /// SIGKILL of one node: a crash.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts a killed node again on its port, data and `nodes.conf`: it rejoins the cluster (a former
    /// primary whose slots moved comes back as a replica of the node that took them).
    pub fn restart(&mut self, index: usize) {
        self.nodes[index].spawn();
    }

    /// Sends `sig` (STOP, CONT) to a running node.
    pub fn signal(&self, index: usize, sig: &str) {
        signal(self.nodes[index].pid().expect("the node runs"), sig);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // A node left stopped (SIGSTOP) by a failed test dies of SIGKILL all the same.
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}
