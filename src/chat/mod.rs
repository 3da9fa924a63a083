//! # The chat: rooms and protocol, and nothing about sockets
//!
//! Seed 004's last program — many users, many rooms, everyone typing at once — with the
//! network taken out. [`Chat`] is fed what happened to a member (it arrived, it sent a line,
//! it left) and answers with an [`Outbox`]: which text goes to which members, and what
//! happened (for the events). Every server model (`src/server/chat_*.rs`) runs this same
//! code; they differ only in how they wait for sockets and how they share it: behind a
//! lock (threads) or owned by the one thread of an event loop.
//!
//! The protocol is text lines, as nc, telnet and `tcp-lab client` send them:
//! a plain line goes to everyone else in the room as `<alice> text`; `/nick`, `/join`,
//! `/rooms`, `/who`, `/msg`, `/quit`, `/help` are commands; `* …` lines come from the
//! server, `! …` lines are refusals.
//!
//! Lesson: `lessons/12-chat.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

pub mod framer;

pub use framer::{clean, LineFramer, TooLong};

/// A member is known by its connection number.
pub type MemberId = u64;

/// Where everybody starts.
pub const LOBBY: &str = "lobby";

/// The longest nick or room name.
pub const MAX_NAME: usize = 16;

/// How much text may wait for one member before it is dropped: a member that does not
/// read must not make the server keep everything the room says for ever.
pub const MAX_QUEUE: usize = 64 * 1024;

/// Why a member left, as the room is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It typed `/quit`.
    Quit,
    /// Its FIN: read() returned 0.
    Eof,
    /// Its RST: ECONNRESET.
    Reset,
    /// `--idle-timeout`: it said nothing for too long.
    Timeout,
    /// A line longer than `--max-line`.
    TooLong,
    /// Its queue passed MAX_QUEUE: it does not read what the room says.
    NotReading,
    /// The server is stopping (Ctrl-C).
    Stopping,
    /// Another failure of its connection (EPIPE, an error).
    Failed,
    /// `/join`: it went to another room (it is still in the chat).
    Moved,
}

impl Why {
    /// The reason in `* alice left #lobby (REASON)`.
    pub fn reason(self) -> &'static str {
        match self {
            Why::Quit => "quit",
            Why::Eof => "connection closed",
            Why::Reset => "connection reset",
            Why::Timeout => "idle timeout",
            Why::TooLong => "line too long",
            Why::NotReading => "not reading",
            Why::Stopping => "server stopping",
            Why::Failed => "connection failed",
            Why::Moved => "went to another room",
        }
    }
}

/// What happened, for the server's events (`join`, `leave`, `nick`, `relay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    Joined {
        who: MemberId,
        nick: String,
        room: String,
    },
    Left {
        who: MemberId,
        nick: String,
        room: String,
        why: Why,
    },
    Renamed {
        who: MemberId,
        old: String,
        new: String,
    },
    /// A line relayed to `to` members: a room's line, or a `/msg` (no room).
    Relayed {
        from: MemberId,
        nick: String,
        room: Option<String>,
        to: usize,
    },
}

/// Text for some members: one line (or a few), ending in `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub to: Vec<MemberId>,
    pub text: String,
}

/// What the chat answers: deliveries in order, what happened, and whether the member that
/// spoke asked to leave (`/quit`: the server closes its connection once its text is out).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outbox {
    pub deliveries: Vec<Delivery>,
    pub happenings: Vec<Happening>,
    pub quit: bool,
}

impl Outbox {
    fn tell(&mut self, who: MemberId, text: String) {
        self.deliveries.push(Delivery {
            to: vec![who],
            text,
        });
    }

    fn tell_all(&mut self, to: Vec<MemberId>, text: String) {
        if !to.is_empty() {
            self.deliveries.push(Delivery { to, text });
        }
    }

    /// Everything `other` says, after what this outbox already says.
    pub fn append(&mut self, other: Outbox) {
        self.deliveries.extend(other.deliveries);
        self.happenings.extend(other.happenings);
        self.quit |= other.quit;
    }
}

#[derive(Debug)]
struct Member {
    nick: String,
    room: String,
}

/// Every member and every room. Rooms are made when someone joins them and gone when the
/// last member leaves.
#[derive(Debug, Default)]
pub struct Chat {
    members: HashMap<MemberId, Member>,
    /// Room name (without `#`) → its members. Ordered, so `/rooms` and `/who` are stable.
    rooms: BTreeMap<String, BTreeSet<MemberId>>,
    /// Nick → member: a nick is unique.
    nicks: HashMap<String, MemberId>,
}

const HELP: &str = "\
* /nick NAME     change your name (1-16 of A-Z a-z 0-9 _ -)
* /join ROOM     go to another room (made if nobody is there)
* /rooms         list the rooms
* /who           list who is in your room
* /msg NICK TEXT send TEXT to NICK only
* /quit          leave
* anything else is said to your room
";

impl Chat {
    pub fn new() -> Chat {
        Chat::default()
    }

    /// How many members are connected.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A member's nick, if it is still here.
    pub fn nick(&self, who: MemberId) -> Option<&str> {
        self.members.get(&who).map(|m| m.nick.as_str())
    }

    /// A new connection: it gets a nick (`user3` for connection 3) and the lobby.
    pub fn arrive(&mut self, who: MemberId) -> Outbox {
        let mut out = Outbox::default();
        let mut nick = format!("user{who}");
        let mut n = 1;
        while self.nicks.contains_key(&nick) {
            n += 1;
            nick = format!("user{who}_{n}"); // someone took `user3` with /nick already
        }
        self.nicks.insert(nick.clone(), who);
        self.members.insert(
            who,
            Member {
                nick: nick.clone(),
                room: LOBBY.to_string(),
            },
        );
        let here = self.enter(who, LOBBY, &mut out);
        out.deliveries.insert(
            0,
            Delivery {
                to: vec![who],
                text: format!(
                    "* welcome {nick}, you are in #{LOBBY} ({here} here); /help lists the commands\n"
                ),
            },
        );
        out
    }

    /// One line from a member (already framed; cleaned here).
    pub fn line(&mut self, who: MemberId, raw: &[u8]) -> Outbox {
        let mut out = Outbox::default();
        if !self.members.contains_key(&who) {
            return out;
        }
        let text = clean(raw);
        let text = text.trim_end();
        if text.is_empty() {
            return out; // an empty line (Enter pressed) says nothing
        }
        let Some(command) = text.strip_prefix('/') else {
            self.say(who, text, &mut out);
            return out;
        };
        let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
        let rest = rest.trim();
        match name {
            "nick" => self.rename(who, rest, &mut out),
            "join" => self.join(who, rest, &mut out),
            "rooms" => self.list_rooms(who, &mut out),
            "who" => self.who(who, &mut out),
            "msg" => self.private(who, rest, &mut out),
            "quit" => {
                out.tell(who, "* bye\n".into());
                out.quit = true;
                out.append(self.leave(who, Why::Quit));
            }
            "help" => out.tell(who, HELP.into()),
            _ => out.tell(
                who,
                format!("! unknown command /{name}; /help lists them\n"),
            ),
        }
        out
    }

    /// A member is gone (or is being dropped): its room is told why.
    pub fn leave(&mut self, who: MemberId, why: Why) -> Outbox {
        let mut out = Outbox::default();
        let Some(member) = self.members.remove(&who) else {
            return out;
        };
        self.nicks.remove(&member.nick);
        self.exit_room(who, &member.room);
        let text = match why {
            Why::NotReading => format!("* {} dropped: not reading\n", member.nick),
            why => format!(
                "* {} left #{} ({})\n",
                member.nick,
                member.room,
                why.reason()
            ),
        };
        out.tell_all(self.room_members(&member.room, None), text);
        out.happenings.push(Happening::Left {
            who,
            nick: member.nick,
            room: member.room,
            why,
        });
        out
    }

    /// A plain line: to everyone else in the room.
    fn say(&mut self, who: MemberId, text: &str, out: &mut Outbox) {
        let member = &self.members[&who];
        let to = self.room_members(&member.room, Some(who));
        out.happenings.push(Happening::Relayed {
            from: who,
            nick: member.nick.clone(),
            room: Some(member.room.clone()),
            to: to.len(),
        });
        out.tell_all(to, format!("<{}> {text}\n", member.nick));
    }

    fn rename(&mut self, who: MemberId, new: &str, out: &mut Outbox) {
        if !valid_name(new) {
            let text = format!("! invalid nick {new:?}: 1-16 of A-Z a-z 0-9 _ -\n");
            return out.tell(who, text);
        }
        if let Some(&owner) = self.nicks.get(new) {
            let text = match owner == who {
                true => format!("* you are already {new}\n"),
                false => format!("! nick {new} is taken\n"),
            };
            return out.tell(who, text);
        }
        let member = self.members.get_mut(&who).expect("a member");
        let old = std::mem::replace(&mut member.nick, new.to_string());
        let room = member.room.clone();
        self.nicks.remove(&old);
        self.nicks.insert(new.to_string(), who);
        out.tell(who, format!("* you are now {new}\n"));
        let others = self.room_members(&room, Some(who));
        out.tell_all(others, format!("* {old} is now {new}\n"));
        out.happenings.push(Happening::Renamed {
            who,
            old,
            new: new.to_string(),
        });
    }

    fn join(&mut self, who: MemberId, room: &str, out: &mut Outbox) {
        let room = room.strip_prefix('#').unwrap_or(room);
        if !valid_name(room) {
            let text = format!("! invalid room {room:?}: 1-16 of A-Z a-z 0-9 _ -\n");
            return out.tell(who, text);
        }
        let member = &self.members[&who];
        let (old, nick) = (member.room.clone(), member.nick.clone());
        if old == room {
            return out.tell(who, format!("* you are already in #{room}\n"));
        }
        self.exit_room(who, &old);
        out.tell_all(
            self.room_members(&old, None),
            format!("* {nick} left #{old}\n"),
        );
        out.happenings.push(Happening::Left {
            who,
            nick,
            room: old,
            why: Why::Moved,
        });
        self.members.get_mut(&who).expect("a member").room = room.to_string();
        let here = self.enter(who, room, out);
        out.tell(who, format!("* you are in #{room} ({here} here)\n"));
    }

    fn list_rooms(&self, who: MemberId, out: &mut Outbox) {
        let mut text = String::from("* rooms:");
        for (i, (room, members)) in self.rooms.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(text, "{sep}#{room} ({})", members.len());
        }
        text.push('\n');
        out.tell(who, text);
    }

    fn who(&self, who: MemberId, out: &mut Outbox) {
        let room = &self.members[&who].room;
        let mut nicks: Vec<&str> = self.rooms[room]
            .iter()
            .map(|id| self.members[id].nick.as_str())
            .collect();
        nicks.sort_unstable();
        out.tell(who, format!("* in #{room}: {}\n", nicks.join(", ")));
    }

    fn private(&mut self, who: MemberId, rest: &str, out: &mut Outbox) {
        let Some((nick, text)) = rest.split_once(' ').filter(|(_, t)| !t.trim().is_empty()) else {
            return out.tell(who, "! usage: /msg NICK TEXT\n".into());
        };
        let Some(&to) = self.nicks.get(nick) else {
            return out.tell(who, format!("! no such nick {nick}\n"));
        };
        let from = self.members[&who].nick.clone();
        out.tell(to, format!("*{from}* {}\n", text.trim()));
        out.happenings.push(Happening::Relayed {
            from: who,
            nick: from,
            room: None,
            to: 1,
        });
    }

    /// Put a member in a room (made on demand), tell the others; returns how many are there.
    fn enter(&mut self, who: MemberId, room: &str, out: &mut Outbox) -> usize {
        let nick = self.members[&who].nick.clone();
        let others = self.room_members(room, None);
        out.tell_all(others, format!("* {nick} joined #{room}\n"));
        let members = self.rooms.entry(room.to_string()).or_default();
        members.insert(who);
        out.happenings.push(Happening::Joined {
            who,
            nick,
            room: room.to_string(),
        });
        members.len()
    }

    /// Take a member out of a room; the last one out removes it.
    fn exit_room(&mut self, who: MemberId, room: &str) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&who);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    fn room_members(&self, room: &str, except: Option<MemberId>) -> Vec<MemberId> {
        self.rooms.get(room).map_or_else(Vec::new, |members| {
            members
                .iter()
                .copied()
                .filter(|&id| Some(id) != except)
                .collect()
        })
    }
}

/// A nick or room name: 1–16 of `A-Za-z0-9_-`.
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text each member got from an outbox, in order.
    fn got(out: &Outbox, who: MemberId) -> String {
        out.deliveries
            .iter()
            .filter(|d| d.to.contains(&who))
            .map(|d| d.text.as_str())
            .collect()
    }

    fn three_in_the_lobby() -> Chat {
        let mut chat = Chat::new();
        for id in 1..=3 {
            chat.arrive(id);
        }
        chat
    }

    #[test]
    fn arriving_is_welcomed_and_announced() {
        let mut chat = Chat::new();
        chat.arrive(1);
        let out = chat.arrive(2);
        assert_eq!(
            got(&out, 2),
            "* welcome user2, you are in #lobby (2 here); /help lists the commands\n"
        );
        assert_eq!(got(&out, 1), "* user2 joined #lobby\n");
        assert_eq!(
            out.happenings,
            [Happening::Joined {
                who: 2,
                nick: "user2".into(),
                room: "lobby".into()
            }]
        );
    }

    #[test]
    fn a_line_reaches_every_other_member_of_the_room() {
        let mut chat = three_in_the_lobby();
        let out = chat.line(1, b"hello there");
        assert_eq!(got(&out, 1), "");
        assert_eq!(got(&out, 2), "<user1> hello there\n");
        assert_eq!(got(&out, 3), "<user1> hello there\n");
        assert!(matches!(
            out.happenings[0],
            Happening::Relayed { to: 2, .. }
        ));
        assert_eq!(chat.line(1, b"").deliveries, []);
    }

    #[test]
    fn text_is_cleaned_before_it_is_relayed() {
        let mut chat = three_in_the_lobby();
        let out = chat.line(1, b"\x1b[2J\x9b\tok\xff");
        assert_eq!(got(&out, 2), "<user1> [2J\u{FFFD} ok\u{FFFD}\n");
    }

    #[test]
    fn nick_is_validated_and_unique() {
        let mut chat = three_in_the_lobby();
        let out = chat.line(1, b"/nick alice");
        assert_eq!(got(&out, 1), "* you are now alice\n");
        assert_eq!(got(&out, 2), "* user1 is now alice\n");
        assert_eq!(
            got(&chat.line(2, b"/nick alice"), 2),
            "! nick alice is taken\n"
        );
        assert!(got(&chat.line(2, b"/nick no way"), 2).starts_with("! invalid nick"));
        assert!(got(&chat.line(2, b"/nick"), 2).starts_with("! invalid nick"));
        let long = format!("/nick {}", "x".repeat(17));
        assert!(got(&chat.line(2, long.as_bytes()), 2).starts_with("! invalid nick"));
        assert_eq!(
            got(&chat.line(1, b"/nick alice"), 1),
            "* you are already alice\n"
        );
        assert_eq!(got(&chat.line(1, b"hi"), 2), "<alice> hi\n");
        // The old nick is free again.
        assert_eq!(
            got(&chat.line(3, b"/nick user1"), 3),
            "* you are now user1\n"
        );
    }

    #[test]
    fn rooms_are_made_on_demand_and_gone_when_empty() {
        let mut chat = three_in_the_lobby();
        let out = chat.line(1, b"/join #rust");
        assert_eq!(got(&out, 1), "* you are in #rust (1 here)\n");
        assert_eq!(got(&out, 2), "* user1 left #lobby\n");
        let out = chat.line(2, b"/join rust");
        assert_eq!(got(&out, 1), "* user2 joined #rust\n");
        assert_eq!(
            got(&chat.line(3, b"/rooms"), 3),
            "* rooms: #lobby (1), #rust (2)\n"
        );
        assert_eq!(got(&chat.line(1, b"/who"), 1), "* in #rust: user1, user2\n");
        // Lines stay in their room.
        let out = chat.line(1, b"in rust");
        assert_eq!(got(&out, 2), "<user1> in rust\n");
        assert_eq!(got(&out, 3), "");
        chat.line(3, b"/join rust");
        assert_eq!(got(&chat.line(3, b"/rooms"), 3), "* rooms: #rust (3)\n");
        assert!(got(&chat.line(3, b"/join #no!"), 3).starts_with("! invalid room"));
    }

    #[test]
    fn msg_goes_to_one_member() {
        let mut chat = three_in_the_lobby();
        chat.line(3, b"/join elsewhere");
        let out = chat.line(1, b"/msg user3 psst  ");
        assert_eq!(got(&out, 3), "*user1* psst\n");
        assert_eq!(got(&out, 2), "");
        assert_eq!(
            got(&chat.line(1, b"/msg nobody hi"), 1),
            "! no such nick nobody\n"
        );
        assert_eq!(
            got(&chat.line(1, b"/msg user3"), 1),
            "! usage: /msg NICK TEXT\n"
        );
    }

    #[test]
    fn quit_help_and_unknown_commands() {
        let mut chat = three_in_the_lobby();
        assert!(got(&chat.line(1, b"/help"), 1).contains("/msg NICK TEXT"));
        assert_eq!(
            got(&chat.line(1, b"/dance now"), 1),
            "! unknown command /dance; /help lists them\n"
        );
        let out = chat.line(1, b"/quit");
        assert!(out.quit);
        assert_eq!(got(&out, 1), "* bye\n");
        assert_eq!(got(&out, 2), "* user1 left #lobby (quit)\n");
        assert_eq!(chat.len(), 2);
        assert_eq!(chat.line(1, b"still here?"), Outbox::default());
    }

    #[test]
    fn leaving_is_announced_with_its_reason() {
        let mut chat = three_in_the_lobby();
        chat.line(2, b"/nick bob");
        assert_eq!(
            got(&chat.leave(1, Why::Reset), 2),
            "* user1 left #lobby (connection reset)\n"
        );
        assert_eq!(
            got(&chat.leave(2, Why::NotReading), 3),
            "* bob dropped: not reading\n"
        );
        assert_eq!(chat.leave(2, Why::Eof), Outbox::default(), "only once");
        let out = chat.leave(3, Why::Timeout);
        assert!(out.deliveries.is_empty(), "nobody left to tell");
        assert!(chat.is_empty());
        assert_eq!(got(&chat.line(3, b"/rooms"), 3), "");
    }

    #[test]
    fn a_taken_default_nick_gets_a_suffix() {
        let mut chat = Chat::new();
        chat.arrive(1);
        chat.line(1, b"/nick user2");
        assert!(got(&chat.arrive(2), 2).starts_with("* welcome user2_2,"));
    }
}
