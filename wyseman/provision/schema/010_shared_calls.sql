-- wyseman for Python: bootstrap schema, part 10: a host's key logins and the releases of
-- its closed connections in one call (`[cluster] shared_state = "postgres"`,
-- docs/operations.md "Several hosts").
--
-- Decisions:
-- * A host sent its key logins (key_logins) and its releases (slot_release_many) as two
--   calls, each its own statement, transaction and round trip; with clients that log in
--   and leave all the time there are about as many of one as of the other. host_calls
--   takes both: what a host has to say while its previous call is under way goes in
--   the next one, whatever it is.
-- * The answer is one row of two arrays, in the order of the logins: no second query to
--   turn them into rows.
-- * The same rules and tables as key_logins and slot_release_many (009_shared_login.sql),
--   which stay for hosts of version 5: hosts of versions 4, 5 and 6 may share one
--   database while they are upgraded one by one.
-- * Locks: the steps go in the order of the users' names, and every step on a user
--   (a release too) first takes the per-user lock of slot_reserve, then the user's row:
--   one order on every host and in every function, so that no two calls each hold what
--   the other waits for (a ticket login's slot_reserve of the same host may run at the
--   same time as this call).
-- Applied after 009_shared_login.sql; idempotent, like the rest of the schema.

-- Host `hid`: closed_counts[j] connections of closed_users[j] closed (a count does not
-- fall below 0); users[i] logged in with a signature whose digest is signeds[i], at
-- moments[i] (seconds since the epoch, the host's clock), to be kept until keeps[i].
-- A login's signature is recorded unless it is already and not expired; if it was new,
-- the login has a place if the user's connections on the live hosts are fewer than
-- `most` (counted after the releases of the same user in this call).
-- → news[i]: the signature was not seen before (now recorded); grants[i]: the place is
-- held.
create or replace function wyseman_shared.host_calls(hid text, users text[],
                                                     signeds bytea[],
                                                     moments double precision[],
                                                     keeps double precision[],
                                                     most integer,
                                                     closed_users text[],
                                                     closed_counts integer[],
                                                     out news boolean[],
                                                     out grants boolean[])
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    step record;
    i integer;
    held bigint;
    locked text;
begin
    news := array_fill(false, array[coalesce(cardinality(users), 0)]);
    grants := news;
    for step in
        select s.name, s.o, s.login
          from (select c.name, c.o, false as login
                  from unnest(closed_users) with ordinality as c(name, o)
                union all
                select u.name, u.o, true
                  from unnest(users) with ordinality as u(name, o)) s
         order by s.name, s.login, s.o loop
        if locked is distinct from step.name then
            perform pg_advisory_xact_lock(hashtext('wyseman_shared.user_slot'),
                                          hashtext(step.name));
            locked := step.name;
        end if;
        i := step.o;
        if not step.login then
            update wyseman_shared.user_slot s set count = greatest(s.count - closed_counts[i], 0)
             where s.host_id = hid and s.username = step.name and s.count > 0;
            continue;
        end if;
        insert into wyseman_shared.replay as r (username, sign_hash, expires)
             values (step.name, signeds[i], to_timestamp(keeps[i]))
        on conflict (username, sign_hash) do update set expires = excluded.expires
              where r.expires < to_timestamp(moments[i]);
        if found then
            news[i] := true;
            select coalesce(sum(s.count), 0) into held
              from wyseman_shared.user_slot s
              join wyseman_shared.host h on h.host_id = s.host_id
             where s.username = step.name and h.lease_until > clock_timestamp();
            if held < most then
                insert into wyseman_shared.user_slot as s (host_id, username, count)
                    values (hid, step.name, 1)
                    on conflict (host_id, username) do update set count = s.count + 1;
                grants[i] := true;
            end if;
        end if;
    end loop;
end;
$$;

revoke execute on all functions in schema wyseman_shared from public;

-- (a wyselib database, where this file is applied by hand, has no version table)
do $$
begin
    if to_regclass('wm.wyseman_schema') is not null then
        insert into wm.wyseman_schema (version) values (6) on conflict (version) do nothing;
    end if;
end;
$$;
