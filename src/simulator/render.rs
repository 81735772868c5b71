//! Commit pages from pre-rendered items.
//!
//! Building every commit as a `serde_json::Value`, cutting it with `fields`
//! and serialising it costs ~15 µs of CPU per commit: at a million commits the
//! simulator would take half of a 2-core machine away from the crawler it is
//! there to measure. A commit's JSON depends only on the commit (the arena is
//! append-only, so it never changes), where links point (origin, workspace,
//! repository slug and name) and the `fields` specification, so each item is
//! rendered once per such context and kept as text; a page is then the
//! skeleton (`pagelen`, `next`, cut by the same `fields`) with the items'
//! text spliced in. The result is byte-for-byte what cutting the whole page
//! would give (tested below against [`fields::apply`] on the full page).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::content::Ctx;
use super::fields;
use super::world::Graph;

/// Stands in for the items while the skeleton is cut and serialised.
const MARKER: &str = "\u{1}bbcrawl-simulator-items\u{1}";

/// Default bound on the cached text (the whole cache is dropped above it).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Rendered items per context (see [`context_key`]) and commit index. An
/// empty string is an item the `fields` specification cut away entirely.
pub(crate) struct RenderCache {
    limit: usize,
    bytes: usize,
    map: HashMap<String, HashMap<u32, Arc<str>>>,
}

impl RenderCache {
    pub(crate) fn new(limit: usize) -> RenderCache {
        RenderCache {
            limit,
            bytes: 0,
            map: HashMap::new(),
        }
    }

    /// Bytes of item text currently cached.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The items `idxs` of `ctx`'s repository as the response will carry
    /// them, rendering (and caching, within the bound) the ones not seen yet.
    pub(crate) fn items(
        &mut self,
        ctx: &Ctx<'_>,
        g: &Graph,
        idxs: &[u32],
        spec: Option<&str>,
    ) -> Vec<Arc<str>> {
        let key = context_key(ctx, spec);
        // Parsed only if some item is not cached yet.
        let mut want = None;
        let mut out = Vec::with_capacity(idxs.len());
        let mut added = 0usize;
        {
            let per = self.map.entry(key).or_default();
            for &i in idxs {
                let item = per
                    .entry(i)
                    .or_insert_with(|| {
                        let want = want.get_or_insert_with(|| want_fn(spec));
                        let text: Arc<str> = render_item(ctx, g, i, spec, want).into();
                        added += text.len() + 48;
                        text
                    })
                    .clone();
                out.push(item);
            }
        }
        self.bytes += added;
        if self.bytes > self.limit {
            // Crude but flat: forget everything (the items just rendered are
            // already in `out`).
            self.map.clear();
            self.bytes = 0;
        }
        out
    }
}

/// Everything besides the commit and `fields` that its JSON depends on.
fn context_key(ctx: &Ctx<'_>, spec: Option<&str>) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        ctx.repo.uuid,
        ctx.origin,
        ctx.ws,
        ctx.repo.slug,
        ctx.repo.name,
        spec.map_or_else(|| "\u{0}".to_owned(), |s| format!("={s}"))
    )
}

/// Which top-level commit keys are worth building for `spec`.
fn want_fn(spec: Option<&str>) -> impl Fn(&str) -> bool {
    let keys = fields::kept_item_keys(spec);
    move |k: &str| keys.as_ref().is_none_or(|ks| ks.iter().any(|x| x == k))
}

/// One item as it appears in a page cut by `spec` ("" when cut away): the
/// commit on a one-item page, cut, and taken out again. `fields` treats
/// arrays transparently and every item alike, so this is the item's share
/// of cutting the whole page.
fn render_item(
    ctx: &Ctx<'_>,
    g: &Graph,
    idx: u32,
    spec: Option<&str>,
    want: &dyn Fn(&str) -> bool,
) -> String {
    let commit = ctx.commit(g, idx, want);
    let Some(spec) = spec else {
        return commit.to_string();
    };
    let page = fields::apply(serde_json::json!({ "values": [commit] }), spec);
    match page.get("values").and_then(|v| v.get(0)) {
        Some(item) => item.to_string(),
        None => String::new(),
    }
}

/// The page: `skeleton` (a commit page whose `values` is empty) cut by
/// `spec`, with `items` in place of its `values`. Cutting drops an array
/// none of whose items kept anything, as it does for the whole page.
pub(crate) fn page(skeleton: Value, spec: Option<&str>, items: &[Arc<str>]) -> String {
    let mut cut = match spec {
        Some(s) => fields::apply(skeleton, s),
        None => skeleton,
    };
    let kept: Vec<&str> = items
        .iter()
        .map(|s| &**s)
        .filter(|s| !s.is_empty())
        .collect();
    let Value::Object(map) = &mut cut else {
        return cut.to_string();
    };
    if !map.contains_key("values") {
        return cut.to_string();
    }
    if kept.is_empty() && !items.is_empty() {
        map.remove("values");
        return cut.to_string();
    }
    map.insert("values".into(), Value::String(MARKER.into()));
    let text = cut.to_string();
    let marker = Value::String(MARKER.into()).to_string();
    let at = text.find(&marker).unwrap_or(text.len());
    let len: usize = kept.iter().map(|s| s.len() + 1).sum();
    let mut out = String::with_capacity(text.len() + len + 2);
    out.push_str(&text[..at]);
    out.push('[');
    for (n, item) in kept.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out.push_str(&text[(at + marker.len()).min(text.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitbucket::models::COMMIT_FIELDS;
    use crate::simulator::{lock, SimOptions, Simulator};
    use serde_json::json;

    /// What cutting the whole page built from full commits gives.
    fn reference(ctx: &Ctx<'_>, g: &Graph, idxs: &[u32], spec: Option<&str>) -> String {
        let values: Vec<Value> = idxs.iter().map(|&i| ctx.commit(g, i, &|_| true)).collect();
        let page = json!({"values": values, "pagelen": 100, "next": "http://h/next?page=x"});
        match spec {
            Some(s) => fields::apply(page, s).to_string(),
            None => page.to_string(),
        }
    }

    #[test]
    fn spliced_pages_equal_cutting_the_whole_page() {
        let sim = Simulator::demo(SimOptions {
            repos: 3,
            commits: 120,
            ..SimOptions::default()
        });
        let world = lock(&sim.inner.world);
        let ws = &world.workspaces[0];
        let specs = [
            None,
            Some(COMMIT_FIELDS),
            Some("values.hash"),
            Some("values.hash,+values.date"),
            Some("-values.links,-values.repository,-values.author.user"),
            Some("next"),
            Some("values.nothing"),
            Some("values.nothing,next"),
            Some("*"),
            Some("values.*"),
            Some("values.author.*,pagelen"),
            Some("-values"),
            Some("-*"),
            Some("values.parents.hash,values.parents.links.self"),
            Some("values.committer.raw"),
            Some(""),
        ];
        // A small cache bound: the cache starting over must not matter.
        let mut cache = RenderCache::new(20_000);
        let mut checked = 0;
        for repo in &ws.repos {
            let ctx = Ctx {
                origin: "http://127.0.0.1:1",
                ws: &ws.name,
                repo,
            };
            let n = repo.graph.nodes.len() as u32;
            let ranges: [Vec<u32>; 3] = [
                (0..n.min(7)).rev().collect(),
                (n.saturating_sub(40)..n).rev().collect(),
                Vec::new(),
            ];
            for spec in specs {
                for idxs in &ranges {
                    for _round in 0..2 {
                        let items = cache.items(&ctx, &repo.graph, idxs, spec);
                        let mut skeleton = json!({"values": [], "pagelen": 100});
                        skeleton["next"] = json!("http://h/next?page=x");
                        let got = page(skeleton, spec, &items);
                        let want = reference(&ctx, &repo.graph, idxs, spec);
                        assert_eq!(got, want, "spec {spec:?}, {} items", idxs.len());
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 3 * 16 * 3 * 2, "{checked}");
        // Some commits have no committer and some are merges: both shapes seen.
        let g = &ws.repos[0].graph;
        assert!(g.nodes.iter().any(|c| c.nparents == 2));
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let sim = Simulator::demo(SimOptions {
            repos: 2,
            commits: 300,
            render_cache_bytes: 50_000,
            ..SimOptions::default()
        });
        let bytes = sim.prerender("http://127.0.0.1:1", Some(COMMIT_FIELDS));
        assert!(bytes <= 50_000, "{bytes}");
        let big = Simulator::demo(SimOptions {
            repos: 2,
            commits: 300,
            ..SimOptions::default()
        });
        assert!(big.prerender("http://127.0.0.1:1", Some(COMMIT_FIELDS)) > 50_000);
    }
}
