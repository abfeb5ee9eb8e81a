//! Immutable data that every member machine of one process would otherwise hold its own copy of
//! (members' declarations, member lists, round plans), shared process-wide by content: a lookup
//! hands out an existing equal value or keeps the new one, so no result depends on what was
//! shared (a simulator's ten thousand machines in one process each planned the same rounds over
//! the same members).

use crate::keyhash::KeyHashing;
use fedmesh_protocol::ids::{JobId, MemberId, Round};
use fedmesh_topologies::{MemberInfo, PlanError, RoundPlan, Selection, Tag, Vetting};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// What a member declared when it joined: its key, group and roles, and its sample count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub info: MemberInfo,
    pub samples: u64,
}

/// Entries by key, each alive only while someone holds what it hands out; emptied of dead
/// entries whenever it doubles, so it stays proportional to what is in use.
struct Pool<K, E> {
    entries: HashMap<K, Vec<E>, KeyHashing>,
    count: usize,
    sweep_at: usize,
}

/// An entry of a pool: whether what it hands out is still held.
trait Kept {
    fn alive(&self) -> bool;
}

impl<V: ?Sized> Kept for Weak<V> {
    fn alive(&self) -> bool {
        self.strong_count() > 0
    }
}

impl<K: Hash + Eq, E: Kept> Pool<K, E> {
    const FIRST_SWEEP: usize = 1_024;

    fn new() -> Self {
        Self { entries: HashMap::default(), count: 0, sweep_at: Self::FIRST_SWEEP }
    }

    /// What the first entry under `key` that `found` accepts hands out.
    fn find<T>(&self, key: &K, found: impl FnMut(&E) -> Option<T>) -> Option<T> {
        self.entries.get(key)?.iter().find_map(found)
    }

    fn insert(&mut self, key: K, entry: E) {
        self.entries.entry(key).or_default().push(entry);
        self.count += 1;
        if self.count >= self.sweep_at {
            self.entries.retain(|_, kept| {
                kept.retain(E::alive);
                !kept.is_empty()
            });
            self.count = self.entries.values().map(Vec::len).sum();
            self.sweep_at = (2 * self.count).max(Self::FIRST_SWEEP);
        }
    }
}

/// Shares values equal by content: the kept one under `key` equal to `value`, else `value`,
/// kept from now on.
fn share<K: Hash + Eq, V: ?Sized + PartialEq>(
    pool: &mut Pool<K, Weak<V>>,
    key: K,
    value: Box<V>,
) -> Arc<V> {
    let same = |kept: &Weak<V>| kept.upgrade().filter(|kept| **kept == *value);
    if let Some(kept) = pool.find(&key, same) {
        return kept;
    }
    let made = Arc::from(value);
    pool.insert(key, Arc::downgrade(&made));
    made
}

/// Locks a pool (a panic elsewhere while it was held leaves it usable: every entry is whole).
fn lock<T>(pool: &'static Mutex<Option<T>>) -> MutexGuard<'static, Option<T>> {
    pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Plans = Pool<(JobId, Round, usize), PlanEntry>;

static DECLARATIONS: Mutex<Option<Pool<MemberId, Weak<Declared>>>> = Mutex::new(None);
static MEMBER_LISTS: Mutex<Option<Pool<u64, Weak<[MemberInfo]>>>> = Mutex::new(None);
static PLANS: Mutex<Option<Plans>> = Mutex::new(None);
static KEY_LISTS: Mutex<Option<Pool<u64, Weak<[MemberId]>>>> = Mutex::new(None);

/// A plan and what it was computed from; the member list by identity (a weak reference keeps
/// its address from being reused).
struct PlanEntry {
    tag: Tag,
    selection: Selection,
    vetted: Arc<[MemberId]>,
    members: Weak<[MemberInfo]>,
    plan: Weak<RoundPlan>,
}

impl Kept for PlanEntry {
    fn alive(&self) -> bool {
        self.plan.strong_count() > 0 && self.members.strong_count() > 0
    }
}

/// A shared declaration equal to `declared`.
pub fn declaration(declared: Declared) -> Arc<Declared> {
    let mut pool = lock(&DECLARATIONS);
    let pool = pool.get_or_insert_with(Pool::new);
    let key = declared.info.id;
    share(pool, key, Box::new(declared))
}

/// A shared list equal to `members`.
pub fn member_list(members: Vec<MemberInfo>) -> Arc<[MemberInfo]> {
    let listed: Vec<&MemberInfo> = members.iter().collect();
    member_list_of(&listed)
}

/// A shared list equal to the members `listed`, copied only when no equal list is kept (every
/// machine of a simulator computes the same live view after each change to its membership:
/// copying ten thousand members' declarations each time, to find the list kept, was most of a
/// 10,000-member job's time once the members' views agreed).
pub fn member_list_of(listed: &[&MemberInfo]) -> Arc<[MemberInfo]> {
    let mut hasher = KeyHashing.build_hasher();
    for member in listed {
        (member.id, &member.group, &member.roles).hash(&mut hasher);
    }
    let key = hasher.finish();
    let same = |kept: &Weak<[MemberInfo]>| {
        let kept = kept.upgrade()?;
        let equal = kept.len() == listed.len() && kept.iter().zip(listed).all(|(a, b)| a == *b);
        equal.then_some(kept)
    };
    let mut pool = lock(&MEMBER_LISTS);
    let pool = pool.get_or_insert_with(Pool::new);
    if let Some(kept) = pool.find(&key, same) {
        return kept;
    }
    let made: Arc<[MemberInfo]> = listed.iter().map(|member| (*member).clone()).collect();
    pool.insert(key, Arc::downgrade(&made));
    made
}

/// A shared list of keys equal to `ids` (the members of a simulator's machines that took the
/// same result vet the same members: one list, compared by address).
pub fn key_list(ids: Vec<MemberId>) -> Arc<[MemberId]> {
    let key = KeyHashing.hash_one(&ids);
    let mut pool = lock(&KEY_LISTS);
    share(pool.get_or_insert_with(Pool::new), key, ids.into_boxed_slice())
}

/// The plan of `round` over `members` (a shared list, see [`member_list`]) with aggregators
/// elected among the `vetted` first (the job's `owner` among them, whose round 1 starts the
/// rotation), computed once per process while some member holds it.
pub fn plan(
    tag: &Tag,
    (job, owner): (&JobId, &MemberId),
    round: Round,
    members: &Arc<[MemberInfo]>,
    selection: &Selection,
    vetted: &Arc<[MemberId]>,
) -> Result<Arc<RoundPlan>, PlanError> {
    let key = (*job, round, members.as_ptr() as *const u8 as usize);
    let found = |kept: &PlanEntry| {
        let same_vetted = Arc::ptr_eq(&kept.vetted, vetted) || kept.vetted == *vetted;
        let same = kept.tag == *tag && kept.selection == *selection && same_vetted;
        let over = kept.members.upgrade().is_some_and(|kept| Arc::ptr_eq(&kept, members));
        kept.plan.upgrade().filter(|_| same && over)
    };
    if let Some(plan) = lock(&PLANS).as_ref().and_then(|pool| pool.find(&key, found)) {
        return Ok(plan);
    }
    let vetting = Vetting { vetted, owner: Some(owner) };
    let plan = Arc::new(RoundPlan::compute_vetted(tag, job, round, members, selection, &vetting)?);
    let entry = PlanEntry {
        tag: tag.clone(),
        selection: selection.clone(),
        vetted: vetted.clone(),
        members: Arc::downgrade(members),
        plan: Arc::downgrade(&plan),
    };
    lock(&PLANS).get_or_insert_with(Pool::new).insert(key, entry);
    Ok(plan)
}
