-- wyseman for Python: bootstrap schema, part 9: a key login's shared-state checks in one
-- call, several key logins in one, and the releases of many connections in one
-- (`[cluster] shared_state = "postgres"`, docs/operations.md "Several hosts").
--
-- Decisions:
-- * A key login recorded its signature (the replay check) and then reserved the user's
--   connection place: two statements, two transactions and two round trips to the
--   database on every key login. key_login does both in one call, with the same rules
--   and on the same tables as the two statements (008_shared_state.sql), so that hosts
--   of either kind can run side by side on one database while they are upgraded.
-- * A replayed signature reserves nothing. A new signature stays recorded even when the
--   user has no place left, as with the two statements: the URL of a login refused for
--   the user's bound cannot be used again once a place is free.
-- * The place is taken by slot_reserve itself, under its lock on the user's name: the
--   bound over the hosts holds whichever function granted the places.
-- Applied after 008_shared_state.sql (it needs its tables and slot_reserve); idempotent,
-- like the rest of the schema. (Gateways of version 6 call host_calls,
-- 010_shared_calls.sql; these functions stay for those of version 5.)

-- Record `signed` (a signature's digest) for `uname` until `keep`, unless it is already
-- recorded and not expired at `moment` (the calling host's clock); if it was new, one more
-- connection of `uname` on host `hid` if the user's connections on the live hosts are
-- fewer than `most`. → new: not seen before (now recorded); granted: the place is held.
create or replace function wyseman_shared.key_login(hid text, uname text, signed bytea,
                                                    keep timestamptz, moment timestamptz,
                                                    most integer,
                                                    out new boolean, out granted boolean)
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
begin
    insert into wyseman_shared.replay as r (username, sign_hash, expires)
         values (uname, signed, keep)
    on conflict (username, sign_hash) do update set expires = excluded.expires
          where r.expires < moment;
    new := found;
    granted := false;
    if new then
        granted := wyseman_shared.slot_reserve(hid, uname, most);
    end if;
end;
$$;

-- What key_login does, for several logins of host `hid` in one call (one transaction):
-- those that a host received while its previous call was under way. users[i] signed
-- signeds[i] at moments[i] (seconds since the epoch, the host's clock), to be kept until
-- keeps[i];
-- → one row (new, granted) per login, in the order given. The logins are taken in the
-- order of the users' names (the same name in the order given), so their locks are
-- taken in one order on every host: two calls cannot each hold a lock the other waits
-- for. (The locks last until the call ends: another host's login of a user in a call
-- waits for all of it.)
create or replace function wyseman_shared.key_logins(hid text, users text[],
                                                     signeds bytea[],
                                                     moments double precision[],
                                                     keeps double precision[],
                                                     most integer)
    returns table (new boolean, granted boolean)
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    i integer;
    uname text;
    held bigint;
    news boolean[];
    grants boolean[];
begin
    for i in select u.o from unnest(users) with ordinality as u(name, o)
              order by u.name, u.o loop
        uname := users[i];
        -- (key_login and slot_reserve written out: a nested call per login costs as
        -- much as the statements themselves)
        insert into wyseman_shared.replay as r (username, sign_hash, expires)
             values (uname, signeds[i], to_timestamp(keeps[i]))
        on conflict (username, sign_hash) do update set expires = excluded.expires
              where r.expires < to_timestamp(moments[i]);
        news[i] := found;
        grants[i] := false;
        if found then
            perform pg_advisory_xact_lock(hashtext('wyseman_shared.user_slot'),
                                          hashtext(uname));
            select coalesce(sum(s.count), 0) into held
              from wyseman_shared.user_slot s
              join wyseman_shared.host h on h.host_id = s.host_id
             where s.username = uname and h.lease_until > clock_timestamp();
            if held < most then
                insert into wyseman_shared.user_slot as s (host_id, username, count)
                    values (hid, uname, 1)
                    on conflict (host_id, username) do update set count = s.count + 1;
                grants[i] := true;
            end if;
        end if;
    end loop;
    return query select news[o], grants[o]
                   from generate_subscripts(users, 1) as o order by o;
end;
$$;

-- Connections of host `hid` closed: users[i] closed counts[i] of them (a count does not
-- fall below 0). A host sends the releases of all the connections that closed while its
-- previous release was under way in one call, so that a host whose clients come and go
-- by the hundred a second writes a few times a second, not once per connection.
-- The rows are updated one by one in the order of the users' names, as key_logins and
-- slot_reserve lock them: a release cannot hold one row while waiting for another that
-- a login holds while it waits for a lock the release's row stands in the way of.
-- (plpgsql, as every function here that runs at each login: its plans are kept for the
-- connection; a `language sql` function plans its statements at every call.)
create or replace function wyseman_shared.slot_release_many(hid text, users text[],
                                                            counts integer[])
    returns void
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    i integer;
begin
    for i in select u.o from unnest(users) with ordinality as u(name, o)
              order by u.name, u.o loop
        update wyseman_shared.user_slot s set count = greatest(s.count - counts[i], 0)
         where s.host_id = hid and s.username = users[i] and s.count > 0;
    end loop;
end;
$$;

revoke execute on all functions in schema wyseman_shared from public;

-- (the schema's version is written by the last file, 010_shared_calls.sql)
