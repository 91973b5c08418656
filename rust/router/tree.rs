//! A persistent (immutable, structurally shared) radix tree over byte keys.
//!
//! Every key can hold two independent values: an *exact* value, found only
//! when the looked-up key equals the stored key, and a *prefix* value, found
//! whenever the stored key is a prefix of the looked-up key. Updates copy only
//! the nodes on the path from the root to the changed key (path copying); all
//! other nodes are shared with the previous version through `Arc`, so an
//! update costs O(key length × node fan-out) regardless of the tree size.

use std::sync::Arc;

/// Which of the two value slots of a key an operation addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Matches only the identical key.
    Exact,
    /// Matches every key that starts with the stored key.
    Prefix,
}

/// Edge labels up to this many bytes are stored inside the node.
const INLINE_LABEL: usize = 22;

/// A node's edge label; short labels avoid a pointer chase on lookup.
#[derive(Clone)]
enum Label {
    Inline { len: u8, buf: [u8; INLINE_LABEL] },
    Heap(Box<[u8]>),
}

impl Label {
    fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE_LABEL {
            let mut buf = [0u8; INLINE_LABEL];
            buf[..bytes.len()].copy_from_slice(bytes);
            Label::Inline {
                len: bytes.len() as u8,
                buf,
            }
        } else {
            Label::Heap(bytes.into())
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Label::Inline { len, buf } => &buf[..*len as usize],
            Label::Heap(b) => b,
        }
    }
}

/// One node; `label` is the edge text leading to it from its parent.
#[derive(Clone)]
struct Node<V> {
    label: Label,
    exact: Option<V>,
    prefix: Option<V>,
    /// Children keyed by the first byte of their (non-empty) label, sorted;
    /// the key sits beside the pointer so a lookup derefs only the child it
    /// takes.
    children: Vec<(u8, Arc<Node<V>>)>,
}

impl<V: Clone> Node<V> {
    fn empty(label: &[u8]) -> Self {
        Node {
            label: Label::new(label),
            exact: None,
            prefix: None,
            children: Vec::new(),
        }
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Option<V> {
        match slot {
            Slot::Exact => &mut self.exact,
            Slot::Prefix => &mut self.prefix,
        }
    }
}

impl<V> Node<V> {
    fn slot(&self, slot: Slot) -> Option<&V> {
        match slot {
            Slot::Exact => self.exact.as_ref(),
            Slot::Prefix => self.prefix.as_ref(),
        }
    }

    fn is_vacant(&self) -> bool {
        self.exact.is_none() && self.prefix.is_none() && self.children.is_empty()
    }

    #[inline]
    fn child(&self, byte: u8) -> Option<&Node<V>> {
        let c = &self.children;
        let found = if c.len() <= 8 {
            c.iter().find(|(b, _)| *b == byte)
        } else {
            c.binary_search_by_key(&byte, |(b, _)| *b)
                .ok()
                .map(|i| &c[i])
        };
        found.map(|(_, n)| &**n)
    }

    fn child_index(&self, byte: u8) -> Result<usize, usize> {
        self.children.binary_search_by_key(&byte, |(b, _)| *b)
    }
}

/// A persistent radix tree; cloning it is one `Arc` increment. Updates copy
/// the nodes they touch unless this tree is their only owner (a tree being
/// built in a batch), in which case they are changed in place.
pub(crate) struct PTree<V> {
    root: Arc<Node<V>>,
}

impl<V> Clone for PTree<V> {
    fn clone(&self) -> Self {
        PTree {
            root: Arc::clone(&self.root),
        }
    }
}

impl<V: Clone> Default for PTree<V> {
    fn default() -> Self {
        PTree {
            root: Arc::new(Node::empty(b"")),
        }
    }
}

/// How many candidate nodes a lookup keeps on the stack before spilling.
const INLINE_CANDIDATES: usize = 24;

impl<V: Clone> PTree<V> {
    /// True when the tree stores no value at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_vacant()
    }

    /// The value stored in `slot` of exactly `key`.
    pub(crate) fn get(&self, key: &[u8], slot: Slot) -> Option<&V> {
        let mut node: &Node<V> = &self.root;
        let mut rest = key;
        while !rest.is_empty() {
            let child = node.child(rest[0])?;
            let label = child.label.as_bytes();
            if !rest.starts_with(label) {
                return None;
            }
            rest = &rest[label.len()..];
            node = child;
        }
        node.slot(slot)
    }

    /// Visits the values that apply to `key` in routing order: the exact
    /// value of `key` first, then the prefix values of every stored prefix of
    /// `key`, longest first. Stops at, and returns, the first `Some` that
    /// `visit` produces. Does not allocate unless the key passes through more
    /// than a couple of dozen prefix-holding nodes.
    #[inline]
    pub(crate) fn find_map<R>(
        &self,
        key: &[u8],
        mut visit: impl FnMut(&V) -> Option<R>,
    ) -> Option<R> {
        let mut inline: [Option<&V>; INLINE_CANDIDATES] = [None; INLINE_CANDIDATES];
        let mut n_inline = 0usize;
        let mut spill: Vec<&V> = Vec::new();

        let mut node: &Node<V> = &self.root;
        let mut rest = key;
        loop {
            if let Some(v) = node.prefix.as_ref() {
                if n_inline < INLINE_CANDIDATES {
                    inline[n_inline] = Some(v);
                    n_inline += 1;
                } else {
                    spill.push(v);
                }
            }
            if rest.is_empty() {
                if let Some(v) = node.exact.as_ref() {
                    if let Some(r) = visit(v) {
                        return Some(r);
                    }
                }
                break;
            }
            let Some(child) = node.child(rest[0]) else {
                break;
            };
            let label = child.label.as_bytes();
            if !rest.starts_with(label) {
                break;
            }
            rest = &rest[label.len()..];
            node = child;
        }

        for v in spill.iter().rev() {
            if let Some(r) = visit(v) {
                return Some(r);
            }
        }
        for v in inline[..n_inline].iter().rev().flatten() {
            if let Some(r) = visit(v) {
                return Some(r);
            }
        }
        None
    }

    /// Sets `slot` of `key` to `f(old value)` (`None` removes it). Nodes
    /// shared with other versions are copied first; versions already
    /// published never change.
    pub(crate) fn update(
        &mut self,
        key: &[u8],
        slot: Slot,
        f: impl FnOnce(Option<V>) -> Option<V>,
    ) {
        let mut f = Some(f);
        let mut apply = |old: Option<V>| (f.take().expect("update callback runs once"))(old);
        update_node(Arc::make_mut(&mut self.root), key, slot, &mut apply);
    }

    /// Number of nodes (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        fn count<V>(n: &Node<V>) -> usize {
            1 + n.children.iter().map(|(_, c)| count(c)).sum::<usize>()
        }
        count(&self.root)
    }
}

/// Copy-on-write update below `node`; `rest` is the key remaining after
/// `node`'s own label.
fn update_node<V: Clone>(
    node: &mut Node<V>,
    rest: &[u8],
    slot: Slot,
    f: &mut dyn FnMut(Option<V>) -> Option<V>,
) {
    if rest.is_empty() {
        let cell = node.slot_mut(slot);
        *cell = f(cell.take());
        return;
    }
    match node.child_index(rest[0]) {
        Err(pos) => {
            if let Some(v) = f(None) {
                let mut leaf = Node::empty(rest);
                *leaf.slot_mut(slot) = Some(v);
                node.children.insert(pos, (rest[0], Arc::new(leaf)));
            }
        }
        Ok(idx) => {
            let common = common_prefix(node.children[idx].1.label.as_bytes(), rest);
            let child_len = node.children[idx].1.label.as_bytes().len();
            if common == child_len {
                let child = Arc::make_mut(&mut node.children[idx].1);
                update_node(child, &rest[common..], slot, f);
                if child.is_vacant() {
                    node.children.remove(idx);
                } else if child.exact.is_none()
                    && child.prefix.is_none()
                    && child.children.len() == 1
                {
                    // Merge a value-less pass-through node into its only child.
                    let (_, grand) = child.children.pop().expect("one child");
                    let mut label = child.label.as_bytes().to_vec();
                    label.extend_from_slice(grand.label.as_bytes());
                    let mut grand = Arc::unwrap_or_clone(grand);
                    grand.label = Label::new(&label);
                    node.children[idx].1 = Arc::new(grand);
                }
            } else if let Some(v) = f(None) {
                // Split the child's edge at `common`.
                let old = &node.children[idx].1;
                let old_label = old.label.as_bytes();
                let mut split = Node::empty(&old_label[..common]);
                let mut lower = Node::clone(old);
                let lower_label = old_label[common..].to_vec();
                lower.label = Label::new(&lower_label);
                let lower = (lower_label[0], Arc::new(lower));
                if common == rest.len() {
                    *split.slot_mut(slot) = Some(v);
                    split.children.push(lower);
                } else {
                    let mut leaf = Node::empty(&rest[common..]);
                    *leaf.slot_mut(slot) = Some(v);
                    let leaf = (rest[common], Arc::new(leaf));
                    if lower.0 < leaf.0 {
                        split.children.extend([lower, leaf]);
                    } else {
                        split.children.extend([leaf, lower]);
                    }
                }
                node.children[idx].1 = Arc::new(split);
            }
        }
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(t: &PTree<u32>, k: &str, s: Slot, v: u32) -> PTree<u32> {
        let mut t = t.clone();
        t.update(k.as_bytes(), s, |_| Some(v));
        t
    }

    fn del(t: &PTree<u32>, k: &str, s: Slot) -> PTree<u32> {
        let mut t = t.clone();
        t.update(k.as_bytes(), s, |_| None);
        t
    }

    fn all(t: &PTree<u32>, k: &str) -> Vec<u32> {
        let mut out = Vec::new();
        t.find_map(k.as_bytes(), |v| {
            out.push(*v);
            None::<()>
        });
        out
    }

    #[test]
    fn exact_then_prefixes_longest_first() {
        let mut t = PTree::default();
        t = ins(&t, "/a", Slot::Prefix, 1);
        t = ins(&t, "/a/b", Slot::Prefix, 2);
        t = ins(&t, "/a/b/c", Slot::Exact, 3);
        t = ins(&t, "/a/b/c", Slot::Prefix, 4);
        t = ins(&t, "", Slot::Prefix, 5);
        t = ins(&t, "/x", Slot::Prefix, 6);
        assert_eq!(all(&t, "/a/b/c"), vec![3, 4, 2, 1, 5]);
        assert_eq!(all(&t, "/a/b/cd"), vec![4, 2, 1, 5]);
        assert_eq!(all(&t, "/a/"), vec![1, 5]);
        assert_eq!(all(&t, "/"), vec![5]);
        assert_eq!(t.get(b"/a/b/c", Slot::Exact), Some(&3));
        assert_eq!(t.get(b"/a/b/", Slot::Exact), None);
    }

    #[test]
    fn persistence_and_removal_compacts() {
        let base = ins(&PTree::default(), "/abc", Slot::Exact, 1);
        let more = ins(&base, "/abd", Slot::Exact, 2);
        let more = ins(&more, "/ab", Slot::Prefix, 3);
        assert_eq!(all(&base, "/abd"), Vec::<u32>::new());
        assert_eq!(all(&more, "/abd"), vec![2, 3]);
        let removed = del(&more, "/abd", Slot::Exact);
        let removed = del(&removed, "/ab", Slot::Prefix);
        assert_eq!(all(&removed, "/abd"), Vec::<u32>::new());
        assert_eq!(all(&removed, "/abc"), vec![1]);
        assert_eq!(removed.node_count(), 2);
        let gone = del(&removed, "/abc", Slot::Exact);
        assert!(gone.is_empty());
        // the old versions are intact
        assert_eq!(all(&more, "/abd"), vec![2, 3]);
    }

    #[test]
    fn many_keys_random_order() {
        let mut t = PTree::default();
        let keys: Vec<String> = (0..500)
            .map(|i| format!("/k{}/{}", (i * 7919) % 500, i % 3))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            t.update(k.as_bytes(), Slot::Exact, |_| Some(i as u32));
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.get(k.as_bytes(), Slot::Exact), Some(&(i as u32)));
        }
        for k in keys.iter().step_by(2) {
            t.update(k.as_bytes(), Slot::Exact, |_| None);
        }
        for (i, k) in keys.iter().enumerate() {
            let want = if i % 2 == 0 { None } else { Some(&(i as u32)) };
            assert_eq!(t.get(k.as_bytes(), Slot::Exact), want);
        }
    }

    #[test]
    fn randomized_against_model() {
        use std::collections::BTreeMap;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut t: PTree<u32> = PTree::default();
        type Model = BTreeMap<(Vec<u8>, bool), u32>;
        let mut model: Model = BTreeMap::new();
        let mut versions: Vec<(PTree<u32>, Model)> = Vec::new();
        let expect = |m: &Model, key: &[u8]| {
            let mut out = Vec::new();
            if let Some(v) = m.get(&(key.to_vec(), true)) {
                out.push(*v);
            }
            for len in (0..=key.len()).rev() {
                if let Some(v) = m.get(&(key[..len].to_vec(), false)) {
                    out.push(*v);
                }
            }
            out
        };
        let key = |rnd: &mut dyn FnMut(u64) -> u64| -> Vec<u8> {
            let len = rnd(7) as usize;
            (0..len).map(|_| b"ab/"[rnd(3) as usize]).collect()
        };
        for step in 0..4000u32 {
            let k = key(&mut rnd);
            let exact = rnd(2) == 0;
            let slot = if exact { Slot::Exact } else { Slot::Prefix };
            if rnd(3) == 0 {
                t.update(&k, slot, |_| None);
                model.remove(&(k.clone(), exact));
            } else {
                t.update(&k, slot, |_| Some(step));
                model.insert((k.clone(), exact), step);
            }
            if step % 97 == 0 {
                versions.push((t.clone(), model.clone()));
            }
            let probe = key(&mut rnd);
            assert_eq!(
                all_bytes(&t, &probe),
                expect(&model, &probe),
                "step {step} probe {probe:?}"
            );
        }
        for (old, m) in &versions {
            for _ in 0..50 {
                let probe = key(&mut rnd);
                assert_eq!(all_bytes(old, &probe), expect(m, &probe));
            }
        }
    }

    fn all_bytes(t: &PTree<u32>, k: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        t.find_map(k, |v| {
            out.push(*v);
            None::<()>
        });
        out
    }
}
