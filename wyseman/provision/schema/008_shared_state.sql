-- wyseman for Python: bootstrap schema, part 8: state shared by several gateway hosts
-- (`[cluster] shared_state = "postgres"`, docs/operations.md "Several hosts").
--
-- Decisions:
-- * A schema of its own, owned by the admin role (the role that applies this file) and
--   closed to PUBLIC: no user session may read whose signatures were accepted or forge
--   connection counts. The gateway runs all of it on its admin connection.
-- * UNLOGGED tables: the rows are short-lived (seconds to minutes) and rewritten all the
--   time; they need no WAL. After a PostgreSQL crash (or on a promoted standby) they are
--   empty: connection counts are rebuilt by the hosts' next renewal
--   (host_renew answers false, the host writes its counts again), and signatures
--   accepted in the last 2 × [auth] date_window could be used once more, as after a
--   gateway restart without shared state.
-- * Replay rows are keyed by the user and a SHA-256 of the signature's r half (32 bytes),
--   whatever the client sent: a row is bounded, and another spelling of the same
--   signature is the same row.
-- * Connection counts: one row per (host, user) with a count; a host row with a lease
--   that the live host renews. Counts of hosts whose lease ended are ignored at once
--   and deleted by the next cleanup, so a host that dies without a word frees its
--   users' places one lease after its last renewal.
-- * A count that falls to 0 keeps its row until the next cleanup: a user whose last
--   connection closes and who logs in again (every login of an app that reconnects)
--   then updates one row in place. Deleting the row and inserting it again left dead
--   index entries behind at every login, which each reservation of the user had to
--   step over until a vacuum.
-- * slot_reserve serializes one user's reservations over every host with a transaction
--   advisory lock on the user's name: the count it reads (a statement after the lock,
--   so a snapshot taken after every earlier reservation committed) includes every
--   place granted before, so two hosts cannot both grant the last place.
-- Every statement here is idempotent: `wyseman db init` applies the whole schema again
-- to upgrade a database of an earlier version.

create schema if not exists wyseman_shared;
revoke all on schema wyseman_shared from public;

create unlogged table if not exists wyseman_shared.replay (
    username  text        not null,
    sign_hash bytea       not null check (length(sign_hash) = 32),
    -- when the accepting host's clock lets the signature go (its date window is over)
    expires   timestamptz not null,
    primary key (username, sign_hash)
);
create index if not exists replay_expires on wyseman_shared.replay (expires);

create unlogged table if not exists wyseman_shared.host (
    host_id     text        primary key,
    -- the database's clock: hosts' clocks may disagree, this one is the same for all
    lease_until timestamptz not null
);

create unlogged table if not exists wyseman_shared.user_slot (
    host_id  text    not null,
    username text    not null,
    count    integer not null check (count >= 0),
    primary key (host_id, username)
);
-- (a table made by version 4 refused a count of 0)
do $$
begin
    if exists (select 1 from pg_constraint
                where conrelid = 'wyseman_shared.user_slot'::regclass
                  and conname = 'user_slot_count_check'
                  and pg_get_constraintdef(oid) = 'CHECK ((count > 0))') then
        alter table wyseman_shared.user_slot drop constraint user_slot_count_check,
            add constraint user_slot_count_check check (count >= 0);
    end if;
end;
$$;
create index if not exists user_slot_username on wyseman_shared.user_slot (username);

-- One more connection of `uname` on host `hid`, if the user's connections on every host
-- with a live lease are fewer than `most`: true (counted) or false (nothing changed).
create or replace function wyseman_shared.slot_reserve(hid text, uname text, most integer)
    returns boolean
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    held bigint;
begin
    perform pg_advisory_xact_lock(hashtext('wyseman_shared.user_slot'), hashtext(uname));
    select coalesce(sum(s.count), 0) into held
      from wyseman_shared.user_slot s
      join wyseman_shared.host h on h.host_id = s.host_id
     where s.username = uname and h.lease_until > clock_timestamp();
    if held >= most then
        return false;
    end if;
    insert into wyseman_shared.user_slot as s (host_id, username, count)
        values (hid, uname, 1)
        on conflict (host_id, username) do update set count = s.count + 1;
    return true;
end;
$$;

-- One connection of `uname` on host `hid` closed (none counted: nothing happens).
create or replace function wyseman_shared.slot_release(hid text, uname text)
    returns void
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
begin
    update wyseman_shared.user_slot set count = count - 1
     where host_id = hid and username = uname and count > 0;
end;
$$;

-- Renew host `hid`'s lease for `lease` seconds; whether the previous one was still alive
-- (false: the host's counts may have been ignored and deleted; it writes them again).
create or replace function wyseman_shared.host_renew(hid text, lease double precision)
    returns boolean
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    alive boolean;
begin
    select h.lease_until > clock_timestamp() into alive
      from wyseman_shared.host h where h.host_id = hid for update;
    insert into wyseman_shared.host as h (host_id, lease_until)
        values (hid, clock_timestamp() + lease * interval '1 second')
        on conflict (host_id) do update set lease_until = excluded.lease_until;
    return coalesce(alive, false);
end;
$$;

-- Replace all of host `hid`'s counts by `counts` (users[i] holds counts[i] connections) and
-- renew its lease: at start (no counts: the rows of a predecessor of this name are
-- gone) and after a lapsed lease. Whether the previous lease was still alive.
create or replace function wyseman_shared.host_sync(hid text, lease double precision,
                                                    users text[], counts integer[])
    returns boolean
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    alive boolean := wyseman_shared.host_renew(hid, lease);
begin
    delete from wyseman_shared.user_slot where host_id = hid;
    insert into wyseman_shared.user_slot (host_id, username, count)
        select hid, u.name, u.count from unnest(users, counts) as u(name, count)
         where u.count > 0;
    return alive;
end;
$$;

-- A host that stops: its places are free at once.
create or replace function wyseman_shared.host_leave(hid text)
    returns void
    language sql
    set search_path = pg_catalog, pg_temp
as $$
    delete from wyseman_shared.user_slot where host_id = hid;
    delete from wyseman_shared.host where host_id = hid;
$$;

-- Delete replay rows expired by `moment` (the calling host's clock), the hosts whose
-- lease ended with their counts, and the counts fallen to 0; → (replay rows deleted,
-- hosts deleted).
create or replace function wyseman_shared.cleanup(moment timestamptz,
                                                  out replays bigint, out hosts bigint)
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
begin
    delete from wyseman_shared.replay where expires < moment;
    get diagnostics replays = row_count;
    delete from wyseman_shared.user_slot s
     where s.count = 0
        or not exists (select 1 from wyseman_shared.host h
                        where h.host_id = s.host_id and h.lease_until > clock_timestamp());
    delete from wyseman_shared.host where lease_until <= clock_timestamp();
    get diagnostics hosts = row_count;
end;
$$;

revoke all on all tables in schema wyseman_shared from public;
revoke execute on all functions in schema wyseman_shared from public;

-- (the schema's version is written by the last file, 010_shared_calls.sql)
