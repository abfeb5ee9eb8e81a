//! Flame's parallel experiments: a schema whose workers fall apart into groups that exchange no
//! model (its top role serving several groups, say) runs one independent experiment per group.
//! Each becomes a schema of its own, which fedmesh runs as a job of its own.

use super::{ChannelSpec, RoleSpec, TagSchema};
use std::collections::{BTreeMap, BTreeSet};

/// Stands for every group label in an association (fedmesh's built-in topologies use it).
const ANY_LABEL: &str = "*";

/// One independent experiment of a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// The labels only this experiment's workers use, joined with `+` (`us`); the schema's
    /// name for the only experiment of a schema that has one.
    pub label: String,
    /// The group labels of the data-consuming role's associations in it: a data set of one of
    /// these groups trains in this experiment.
    pub groups: BTreeSet<String>,
    /// The schema with only this experiment's group associations, channels and labels.
    pub schema: TagSchema,
}

/// A worker as Flame deploys one: a role's group association (`role`, `association` index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Worker {
    role: usize,
    association: usize,
}

impl TagSchema {
    /// The schema's independent experiments, as Flame deploys them: a worker per group
    /// association of each role, two workers linked when a channel between their roles carries
    /// the same label for both (channels to the coordinator aside), and an experiment per set of
    /// linked workers with a data-consuming one among them. Workers in no experiment (the
    /// coordinator's) take part in every one. A schema with one experiment is returned whole.
    pub fn parallel_experiments(&self) -> Vec<Experiment> {
        let workers = self.workers();
        let components = self.linked(&workers);
        let (experiments, shared): (Vec<Vec<Worker>>, Vec<Vec<Worker>>) =
            components.into_iter().partition(|set| set.iter().any(|w| self.consumes(*w)));
        if experiments.len() <= 1 {
            let groups = experiments.first().map(|set| self.groups(set)).unwrap_or_default();
            return vec![Experiment { label: self.name.clone(), groups, schema: self.clone() }];
        }
        let shared: Vec<Worker> = shared.into_iter().flatten().collect();
        let labels: Vec<BTreeSet<&str>> = experiments.iter().map(|s| self.labels(s)).collect();
        experiments
            .iter()
            .enumerate()
            .map(|(index, set)| {
                let others: BTreeSet<&str> = (0..labels.len())
                    .filter(|other| *other != index)
                    .flat_map(|other| labels[other].iter().copied())
                    .collect();
                let own: Vec<&str> = labels[index].difference(&others).copied().collect();
                let label =
                    if own.is_empty() { format!("experiment-{index}") } else { own.join("+") };
                let kept: BTreeSet<Worker> = set.iter().chain(&shared).copied().collect();
                Experiment { label, groups: self.groups(set), schema: self.narrowed(&kept) }
            })
            .collect()
    }

    fn workers(&self) -> Vec<Worker> {
        let per_role = self.roles.iter().enumerate().map(|(role, spec)| {
            (0..spec.group_association.len()).map(move |association| Worker { role, association })
        });
        per_role.flatten().collect()
    }

    fn association(&self, worker: Worker) -> &BTreeMap<String, String> {
        &self.roles[worker.role].group_association[worker.association]
    }

    fn consumes(&self, worker: Worker) -> bool {
        self.roles[worker.role].is_data_consumer
    }

    /// The sets of linked workers (union-find over the channels' shared labels).
    fn linked(&self, workers: &[Worker]) -> Vec<Vec<Worker>> {
        let mut parent: Vec<usize> = (0..workers.len()).collect();
        for channel in self.channels.iter().filter(|c| !c.coordinates()) {
            for (a, first) in workers.iter().enumerate() {
                for (b, second) in workers.iter().enumerate().skip(a + 1) {
                    if self.channel_links(channel, *first, *second) {
                        let (root_a, root_b) = (root(&mut parent, a), root(&mut parent, b));
                        parent[root_a] = root_b;
                    }
                }
            }
        }
        let mut sets: BTreeMap<usize, Vec<Worker>> = BTreeMap::new();
        for (index, worker) in workers.iter().enumerate() {
            sets.entry(root(&mut parent, index)).or_default().push(*worker);
        }
        sets.into_values().collect()
    }

    fn channel_links(&self, channel: &ChannelSpec, a: Worker, b: Worker) -> bool {
        let names = [&self.roles[a.role].name, &self.roles[b.role].name];
        let ends = [&channel.pair[0], &channel.pair[1]];
        let joins = (names[0] == ends[0] && names[1] == ends[1])
            || (names[0] == ends[1] && names[1] == ends[0]);
        let labels =
            (self.association(a).get(&channel.name), self.association(b).get(&channel.name));
        match labels {
            (Some(x), Some(y)) => joins && (x == y || x == ANY_LABEL || y == ANY_LABEL),
            _ => false,
        }
    }

    fn labels(&self, set: &[Worker]) -> BTreeSet<&str> {
        set.iter().flat_map(|w| self.association(*w).values().map(String::as_str)).collect()
    }

    fn groups(&self, set: &[Worker]) -> BTreeSet<String> {
        let consumers = set.iter().filter(|w| self.consumes(**w));
        consumers.flat_map(|w| self.association(*w).values().cloned()).collect()
    }

    /// The schema with only the `kept` workers' associations, the roles that still have some
    /// (or never had any), the channels between those roles, and the labels they still use.
    fn narrowed(&self, kept: &BTreeSet<Worker>) -> TagSchema {
        let roles: Vec<RoleSpec> = self
            .roles
            .iter()
            .enumerate()
            .filter_map(|(role, spec)| {
                let associations: Vec<BTreeMap<String, String>> = (0..spec.group_association.len())
                    .filter(|association| {
                        kept.contains(&Worker { role, association: *association })
                    })
                    .map(|association| spec.group_association[association].clone())
                    .collect();
                let keep = spec.group_association.is_empty() || !associations.is_empty();
                keep.then(|| RoleSpec { group_association: associations, ..spec.clone() })
            })
            .collect();
        let has_role = |name: &String| roles.iter().any(|role| &role.name == name);
        let channels = self
            .channels
            .iter()
            .filter(|channel| channel.pair.iter().all(has_role))
            .map(|channel| narrowed_channel(channel, &roles))
            .collect();
        TagSchema { roles, channels, ..self.clone() }
    }
}

/// The channel with the `groupBy` labels the roles' associations still give it (all of them if
/// none does, or one gives any label).
fn narrowed_channel(channel: &ChannelSpec, roles: &[RoleSpec]) -> ChannelSpec {
    let used: BTreeSet<&str> = roles
        .iter()
        .flat_map(|role| &role.group_association)
        .filter_map(|association| association.get(&channel.name).map(String::as_str))
        .collect();
    let mut narrowed = channel.clone();
    if !used.is_empty() && !used.contains(ANY_LABEL) {
        narrowed.group_by.value.retain(|label| used.contains(label.as_str()));
    }
    narrowed
}

fn root(parent: &mut [usize], mut index: usize) -> usize {
    while parent[index] != index {
        parent[index] = parent[parent[index]];
        index = parent[index];
    }
    index
}
