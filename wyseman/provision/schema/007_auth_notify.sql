-- wyseman for Python: bootstrap schema, part 7: tell the gateways when credentials change.
--
-- When a user's stored key changes (a ticket login registered a new one, an admin
-- cleared it) or the user is renamed or removed, every gateway closes that user's open
-- sockets except those logged in with a key that is still stored. The payload names
-- the user and the public keys (their `x` coordinates) that remain valid.
-- On a wyselib database (which `db init` leaves alone) the same trigger can be added
-- by hand: see docs/operations.md.

create or replace function base.ent_tf_auth_notify() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    remaining jsonb := '[]'::jsonb;
    stored jsonb;
begin
    if tg_op = 'UPDATE' then
        if old.conn_pub is not distinct from new.conn_pub
           and old.username is not distinct from new.username then
            return null;
        end if;
        if old.username is not distinct from new.username then
            stored := new.conn_pub;
            if jsonb_typeof(stored) = 'object' then
                remaining := (
                    select coalesce(jsonb_agg(k->'x'), '[]'::jsonb)
                      from (select stored->'websocket' as k union all
                            select stored->'default' union all
                            select stored) keys
                     where jsonb_typeof(k) = 'object' and k ? 'x');
            end if;
        end if;
    end if;
    if old.username is not null then
        perform pg_notify('wyseman_auth',
                          jsonb_build_object('user', old.username, 'keys', remaining)::text);
    end if;
    return null;
end;
$$;

drop trigger if exists base_ent_tr_auth_notify on base.ent;
create trigger base_ent_tr_auth_notify after update or delete on base.ent
    for each row execute function base.ent_tf_auth_notify();

revoke all on function base.ent_tf_auth_notify() from public;
