-- wyseman for Python: bootstrap schema, part 6: privileges.
--
-- Decisions:
-- * The role that applies this schema owns every object and is the gateway's admin
--   role: it alone runs token_valid, ticket_login, the parm setters and reads base.*.
-- * Every function in base is revoked from PUBLIC (PostgreSQL grants EXECUTE to PUBLIC
--   by default): base.token_valid and base.ticket_login in particular are security
--   definer and must stay with the admin.
-- * wyseman_user (NOLOGIN, cluster-wide) is the group of every login user created by
--   `wyseman user add`. It gets only what the gateway's sessions need: usage on the
--   base and wm schemas and base.curr_eid(). No table of base (not base.token, not
--   base.ent, whose conn_pub holds keys); applications grant their own objects.
-- * The dictionary (wm.table_meta, wm.table_lang, wm.lang, and the text/style tables
--   the views read) is readable by PUBLIC, as in wyseman: the gateway looks metadata up
--   as the admin, but user sessions and tools may read it too. The helper functions
--   behind the views keep PUBLIC's default EXECUTE, as views call them with the
--   privileges of the querying role.

do $$
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'wyseman_user') then
        begin
            create role wyseman_user nologin;
        exception when duplicate_object or unique_violation then
            null;  -- created concurrently (roles are shared by all databases of a cluster)
        end;
    end if;
end;
$$;

revoke all on schema base from public;
revoke execute on all functions in schema base from public;
revoke all on all tables in schema base from public;
revoke execute on function wm.init_dictionary() from public;
revoke all on table wm.wyseman_schema from public;

grant usage on schema base to wyseman_user;
grant usage on schema wm to wyseman_user;
grant execute on function base.curr_eid() to wyseman_user;

grant usage on schema wm to public;
grant select on wm.table_meta, wm.table_lang, wm.lang to public;
grant select on wm.table_style, wm.column_style, wm.table_text, wm.column_text,
                wm.value_text, wm.message_text to public;
grant execute on function wm.column_natives(oid), wm.relation_meta(oid) to public;

-- (the schema's version is written by the last file, 010_shared_calls.sql)
