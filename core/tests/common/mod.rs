//! What the core's integration tests share: a recording stand-in for a connection
//! actor, and signing up through the core.

use actix::prelude::*;
use hub_core::{ConnContext, Core, SessionMsg};
use hub_plugin_sdk::{Answer, ConnId, Op, PasswordScheme, UserRef};
use tokio::sync::mpsc;

/// A stand-in connection actor: forwards what the core sends it to the test.
pub struct Recorder(mpsc::UnboundedSender<SessionMsg>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<SessionMsg> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: SessionMsg, _ctx: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// A connection as the core sees it, and what the core sent it.
pub struct Conn {
    pub ctx: ConnContext,
    pub rx: mpsc::UnboundedReceiver<SessionMsg>,
}

/// Connection `id`, with a recorder behind it.
pub fn conn(id: u64) -> Conn {
    let (tx, rx) = mpsc::unbounded_channel();
    // As the hub's connection actors do: room for two backlog pages. Set before the
    // address is handed out (in `started` it would race the first pushes, which would
    // find actix's default capacity of 16).
    let addr = Recorder::create(|ctx| {
        ctx.set_mailbox_capacity(1024);
        Recorder(tx)
    });
    Conn {
        ctx: ConnContext::new(ConnId(id), "test", "127.0.0.1", Some(addr.recipient())),
        rx,
    }
}

/// Signs `handle` up on `conn` (password "pw").
pub async fn signup(core: &Core, conn: &mut Conn, handle: &str) -> UserRef {
    let op = Op::Signup {
        handle: handle.into(),
        password: "pw".into(),
        scheme: PasswordScheme::Pbkdf2Sha256,
    };
    match core.execute(&mut conn.ctx, op).await.unwrap() {
        Answer::Session { user, .. } => user,
        other => panic!("{other:?}"),
    }
}
