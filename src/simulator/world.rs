//! The simulated world: workspaces, repositories and their commit graphs.
//!
//! Commits live in an append-only arena per repository ([`Graph`]). A commit's
//! parents always have smaller indices than the commit itself, so "index
//! descending" is a valid topological newest-first order (what `git log
//! --topo-order` would accept), and a walk computed once stays valid forever:
//! later pushes only append. That is what lets the simulator cache walks and
//! keep in-progress page tokens stable while the world changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::content::PEOPLE;
use super::rng::{mix, Rng};
use super::SimCredential;

/// 2024-01-01T00:00:00Z: every generated date starts here so output is reproducible.
pub(crate) const BASE_TIME: i64 = 1_704_067_200;

/// Marker for "no committer recorded" in [`Node::committer`].
pub(crate) const NO_COMMITTER: u16 = u16::MAX;

/// Offsets (minutes east of UTC) used for the minority of commits that keep
/// their original time zone.
const OFFSETS: [i16; 6] = [330, -420, 540, 60, -180, 345];

/// One commit, kept compact (a 1,000,000-commit world must fit in memory);
/// the message is regenerated on demand from `msg_seed`.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub hash: [u8; 20],
    /// Unix seconds.
    pub time: i64,
    /// Minutes east of UTC.
    pub offset_min: i16,
    /// Index into [`PEOPLE`].
    pub author: u16,
    /// Index into [`PEOPLE`], or [`NO_COMMITTER`].
    pub committer: u16,
    pub msg_seed: u64,
    pub parents: [u32; 2],
    pub nparents: u8,
}

impl Node {
    pub(crate) fn parents(&self) -> &[u32] {
        &self.parents[..self.nparents as usize]
    }
}

/// Append-only commit arena of one repository (shared copy-on-write by forks).
#[derive(Clone, Debug, Default)]
pub(crate) struct Graph {
    pub nodes: Vec<Node>,
    /// Every hash ever created here, including commits a force push orphaned,
    /// so page tokens of walks started before the force push stay decodable.
    pub index: HashMap<[u8; 20], u32>,
    /// Whether a commit is still reachable from some branch; orphaned commits
    /// answer 404 when named in a revision, `include` or `exclude`.
    pub alive: Vec<bool>,
}

/// Hashes as text: the store's helpers (lowercase out, either case in).
pub(crate) use crate::store::keys::{hash_hex as hex, parse_hash};

/// What a revision string names.
pub(crate) enum Resolved {
    /// A branch with this tip (`None`: a branch without commits).
    Branch(Option<u32>),
    /// A commit by hash or unique prefix.
    Commit(u32),
    Unknown,
}

/// Sorted tip indices and sorted exclude indices of a walk.
pub(crate) type WalkKey = (Vec<u32>, Vec<u32>);

/// A generated commit's clock and randomness live in the repository, so a
/// repository's history depends only on the seed and its creation order.
#[derive(Debug)]
pub(crate) struct Repo {
    pub uuid: String,
    pub slug: String,
    pub name: String,
    pub mainbranch: Option<String>,
    /// Branch name → tip (`None`: the branch exists but has no commits).
    pub branches: BTreeMap<String, Option<u32>>,
    /// Tag name → tagged commit (lightweight tags; only webhooks show them).
    pub tags: BTreeMap<String, u32>,
    pub graph: Arc<Graph>,
    pub created_on: i64,
    pub updated_on: i64,
    pub is_private: bool,
    pub language: &'static str,
    pub rng: Rng,
    /// Time of the newest generated commit: new commits continue from here.
    pub clock: i64,
    /// Walk cache keyed by (sorted tips, sorted excludes). Never invalidated:
    /// the arena is append-only, so a walk from fixed commits never changes.
    pub walks: HashMap<WalkKey, Arc<Vec<u32>>>,
}

/// Above this many cached walks a repository forgets them all (a crude bound
/// that keeps memory flat when a client sends many different excludes).
const WALK_CACHE_LIMIT: usize = 64;

impl Repo {
    pub(crate) fn new(uuid: String, slug: &str, rng: Rng, start: i64) -> Repo {
        Repo {
            uuid,
            slug: slug.to_owned(),
            name: slug.to_owned(),
            mainbranch: None,
            branches: BTreeMap::new(),
            tags: BTreeMap::new(),
            graph: Arc::new(Graph::default()),
            created_on: start,
            updated_on: start,
            is_private: true,
            language: "",
            rng,
            clock: start,
            walks: HashMap::new(),
        }
    }

    /// Appends one commit with the given parents; returns its index.
    pub(crate) fn make_commit(&mut self, parents: &[u32]) -> u32 {
        let rng = &mut self.rng;
        self.clock += 600 + rng.below(6 * 3600) as i64;
        let mut time = self.clock;
        // Clock skew and rebases: some commits claim to be older than their parents.
        if rng.chance(0.05) {
            time -= 3600 + rng.below(72 * 3600) as i64;
        }
        let offset_min = if rng.chance(0.15) {
            *rng.pick(&OFFSETS)
        } else {
            0
        };
        let npeople = PEOPLE.len() as u64;
        let author = rng.below(npeople) as u16;
        let committer = if rng.chance(0.1) {
            NO_COMMITTER
        } else if rng.chance(0.85) {
            author
        } else {
            rng.below(npeople) as u16
        };
        let msg_seed = rng.next_u64();
        let mut hash = [0u8; 20];
        let (a, b, c) = (rng.next_u64(), rng.next_u64(), rng.next_u64());
        hash[..8].copy_from_slice(&a.to_le_bytes());
        hash[8..16].copy_from_slice(&b.to_le_bytes());
        hash[16..].copy_from_slice(&c.to_le_bytes()[..4]);
        let mut p = [0u32; 2];
        let np = parents.len().min(2);
        p[..np].copy_from_slice(&parents[..np]);
        let graph = Arc::make_mut(&mut self.graph);
        let idx = graph.nodes.len() as u32;
        graph.nodes.push(Node {
            hash,
            time,
            offset_min,
            author,
            committer,
            msg_seed,
            parents: p,
            nparents: np as u8,
        });
        graph.index.insert(hash, idx);
        graph.alive.push(true);
        idx
    }

    /// Builds `n` commits on top of `tip` (first-parent line), with short side
    /// branches merged back when `merges` is set. Exactly `n` commits become
    /// reachable from the returned tip that were not reachable from `tip`.
    pub(crate) fn grow(&mut self, mut tip: Option<u32>, n: usize, merges: bool) -> Option<u32> {
        let mut remaining = n;
        while remaining > 0 {
            if merges && tip.is_some() && remaining >= 4 && self.rng.chance(0.08) {
                let side_len = 1 + self.rng.below(3.min(remaining as u64 - 2)) as usize;
                let mut side = tip;
                for _ in 0..side_len {
                    side = Some(self.make_commit(side.as_slice()));
                }
                let between = self.rng.below(2.min((remaining - side_len - 1) as u64 + 1)) as usize;
                for _ in 0..between {
                    tip = Some(self.make_commit(tip.as_slice()));
                }
                let (Some(main), Some(side)) = (tip, side) else {
                    break;
                };
                tip = Some(self.make_commit(&[main, side]));
                remaining -= side_len + between + 1;
            } else {
                tip = Some(self.make_commit(tip.as_slice()));
                remaining -= 1;
            }
        }
        tip
    }

    /// The default branch's tip (`None`: no default branch, or no commits).
    pub(crate) fn main_tip(&self) -> Option<u32> {
        self.mainbranch
            .as_ref()
            .and_then(|b| self.branches.get(b))
            .copied()
            .flatten()
    }

    /// Resolves a branch name, a 40-hex hash or a unique hex prefix (7+ digits)
    /// of a commit still reachable from some branch.
    pub(crate) fn resolve(&self, rev: &str) -> Resolved {
        if let Some(tip) = self.branches.get(rev) {
            return Resolved::Branch(*tip);
        }
        let g = &self.graph;
        if let Some(h) = parse_hash(rev) {
            return match g.index.get(&h) {
                Some(&i) if g.alive[i as usize] => Resolved::Commit(i),
                _ => Resolved::Unknown,
            };
        }
        if rev.len() >= 7 && rev.len() < 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            let want = rev.to_ascii_lowercase();
            let mut found = None;
            for (i, node) in g.nodes.iter().enumerate() {
                if g.alive[i] && hex(&node.hash).starts_with(&want) {
                    if found.is_some() {
                        return Resolved::Unknown; // ambiguous
                    }
                    found = Some(i as u32);
                }
            }
            if let Some(i) = found {
                return Resolved::Commit(i);
            }
        }
        Resolved::Unknown
    }

    /// Index of a hash, including orphaned commits (for page tokens).
    pub(crate) fn any_commit(&self, hash: &str) -> Option<u32> {
        parse_hash(hash).and_then(|h| self.graph.index.get(&h).copied())
    }

    /// Commits reachable from `tips` minus those reachable from `excludes`,
    /// newest first; cached.
    pub(crate) fn walk(&mut self, mut tips: Vec<u32>, mut excludes: Vec<u32>) -> Arc<Vec<u32>> {
        tips.sort_unstable();
        tips.dedup();
        excludes.sort_unstable();
        excludes.dedup();
        let key = (tips, excludes);
        if let Some(w) = self.walks.get(&key) {
            return Arc::clone(w);
        }
        let list = Arc::new(compute_walk(&self.graph, &key.0, &key.1));
        if self.walks.len() >= WALK_CACHE_LIMIT {
            self.walks.clear();
        }
        self.walks.insert(key, Arc::clone(&list));
        list
    }

    /// Tips of every branch (what `commits` without a revision walks).
    pub(crate) fn all_tips(&self) -> Vec<u32> {
        self.branches.values().flatten().copied().collect()
    }

    /// Recomputes which commits are reachable from some branch (after a force push).
    pub(crate) fn refresh_alive(&mut self) {
        let tips = self.all_tips();
        let reach = compute_walk(&self.graph, &tips, &[]);
        let graph = Arc::make_mut(&mut self.graph);
        graph.alive.iter_mut().for_each(|a| *a = false);
        for i in reach {
            graph.alive[i as usize] = true;
        }
        // Tokens cache resolved walks; those stay valid (append-only arena).
    }
}

/// Reachability walk: mark everything reachable from `excludes`, then collect
/// what is reachable from `tips` without crossing marked commits. O(reachable).
pub(crate) fn compute_walk(g: &Graph, tips: &[u32], excludes: &[u32]) -> Vec<u32> {
    const EXCLUDED: u8 = 1;
    const INCLUDED: u8 = 2;
    let mut mark = vec![0u8; g.nodes.len()];
    let mut stack: Vec<u32> = excludes.to_vec();
    while let Some(i) = stack.pop() {
        if mark[i as usize] == EXCLUDED {
            continue;
        }
        mark[i as usize] = EXCLUDED;
        stack.extend_from_slice(g.nodes[i as usize].parents());
    }
    let mut out = Vec::new();
    stack.extend_from_slice(tips);
    while let Some(i) = stack.pop() {
        if mark[i as usize] != 0 {
            continue;
        }
        mark[i as usize] = INCLUDED;
        out.push(i);
        stack.extend_from_slice(g.nodes[i as usize].parents());
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    out
}

/// A workspace: its repositories in listing order.
#[derive(Debug)]
pub(crate) struct Workspace {
    pub name: String,
    pub uuid: String,
    pub repos: Vec<Repo>,
}

/// Everything the simulator knows.
#[derive(Debug)]
pub(crate) struct World {
    pub seed: u64,
    pub workspaces: Vec<Workspace>,
    pub credentials: Vec<SimCredential>,
    /// Tokens, e-mails, usernames or passwords of credentials made invalid
    /// ([`super::Simulator::set_credential_valid`]): they answer 401.
    pub revoked: HashSet<String>,
    /// Simulated "now" (Unix seconds): moves forward with every change so
    /// `updated_on` is reproducible instead of following the wall clock.
    pub now: i64,
    /// Counts created repositories and workspaces, to derive their seeds.
    pub counter: u64,
    /// Deleted repositories, by workspace, for
    /// [`super::Simulator::restore_repo`].
    pub deleted: Vec<(String, Repo)>,
}

impl World {
    pub(crate) fn new(seed: u64) -> World {
        World {
            seed,
            workspaces: Vec::new(),
            credentials: Vec::new(),
            revoked: HashSet::new(),
            now: BASE_TIME,
            counter: 0,
            deleted: Vec::new(),
        }
    }

    /// A fresh generator for the next created object.
    pub(crate) fn next_rng(&mut self) -> Rng {
        self.counter += 1;
        Rng::new(mix(self.seed) ^ mix(self.counter.wrapping_mul(0x2545_F491_4F6C_DD1D)))
    }

    pub(crate) fn workspace(&self, ws: &str) -> Option<&Workspace> {
        self.workspaces.iter().find(|w| w.name == ws)
    }

    pub(crate) fn workspace_mut(&mut self, ws: &str) -> Option<&mut Workspace> {
        self.workspaces.iter_mut().find(|w| w.name == ws)
    }

    pub(crate) fn repo_mut(&mut self, ws: &str, slug: &str) -> Option<&mut Repo> {
        self.workspace_mut(ws)?
            .repos
            .iter_mut()
            .find(|r| r.slug == slug)
    }

    /// Advances the simulated clock past everything generated so far and
    /// returns the new "now" (used for `updated_on` after a change).
    pub(crate) fn tick(&mut self, at_least: i64) -> i64 {
        self.now = self.now.max(at_least) + 60;
        self.now
    }
}
