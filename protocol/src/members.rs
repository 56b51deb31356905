//! Plain views of gossip membership for the node: who is live and what keys each
//! published, without chitchat's types.

use std::collections::BTreeMap;

use chitchat::{ChitchatId, NodeState};

use crate::membership::Member;

/// One live member and its published keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub member: Member,
    pub keys: BTreeMap<String, String>,
}

/// Converts a live-nodes snapshot (from `Membership::live_watcher`). Where a node shows
/// up under two generations (it restarted), only the newest is kept.
pub fn views(snapshot: &BTreeMap<ChitchatId, NodeState>) -> Vec<MemberView> {
    let mut newest: BTreeMap<String, MemberView> = BTreeMap::new();
    for (id, state) in snapshot {
        let view = MemberView {
            member: Member::from(id),
            keys: state.key_values().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        };
        let keep =
            newest.get(&view.member.node_id).is_none_or(|old| old.member.generation < view.member.generation);
        if keep {
            newest.insert(view.member.node_id.clone(), view);
        }
    }
    newest.into_values().collect()
}
