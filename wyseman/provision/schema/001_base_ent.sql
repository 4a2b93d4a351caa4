-- wyseman for Python: bootstrap schema, part 1: schemas, version table, entities.
--
-- The whole directory is applied in file-name order, in ONE transaction, by
-- wyseman.provision.bootstrap. Every statement is idempotent (if not exists / or replace /
-- guarded DO blocks), so applying it again changes nothing.
--
-- Shapes follow wyselib (schema/base/ent.wms) closely enough that wyselib-style apps
-- and the JS tooling (wyclif bin/ticket) work, but nothing here is wyselib: it is the
-- minimum runtime contract of docs/protocol.md, 12 "Database contract". Objects are
-- owned by the role that runs the bootstrap; that role is the gateway's admin role.

create schema if not exists base;
create schema if not exists wm;

-- Version marker: its presence is what tells wyseman's own schema from wyselib's.
create table if not exists wm.wyseman_schema (
    version     int         primary key
  , applied     timestamptz not null default current_timestamp
);

-- Entity numbers come from one sequence per entity type (wyselib computes max()+1
-- under a table lock; sequences need no lock). Start values are wyselib's ranges.
create sequence if not exists base.ent_p_seq start with 1000 minvalue 1000;  -- people
create sequence if not exists base.ent_o_seq start with 500  minvalue 500;   -- organizations
create sequence if not exists base.ent_g_seq start with 100  minvalue 100;   -- groups
create sequence if not exists base.ent_r_seq start with 1    minvalue 1;     -- roles

-- Stamp columns: crt_by/mod_by default to session_user, the identity the gateway
-- preserves for every request (docs/protocol.md, 12.4 "Roles and grants"). Unlike
-- wyselib there is no foreign key from the stamps to base.ent(username): the admin role
-- need not be an entity.
create table if not exists base.ent (
    id          text        primary key
  , ent_num     int         not null check (ent_num > 0)
  , ent_type    varchar(1)  not null default 'p' check (ent_type in ('p', 'o', 'g', 'r'))
  , ent_name    text        not null
  , fir_name    text        check (ent_type = 'p' or fir_name is null)
  , mid_name    text        check (fir_name is not null or mid_name is null)
  , pref_name   text        check (fir_name is not null or pref_name is null)
  , title       text        check (fir_name is not null or title is null)
  , ent_cmt     text
  , born_date   date
  , username    text        unique
  , conn_pub    jsonb
  , ent_inact   boolean     not null default false
  , crt_date    timestamptz not null default current_timestamp
  , mod_date    timestamptz not null default current_timestamp
  , crt_by      name        not null default session_user
  , mod_by      name        not null default session_user
  , unique (ent_type, ent_num)
);

-- Before insert/update: number new entities, derive the id ('p1000', 'r1'), keep
-- conn_pub empty without a username (as wyselib does) and refresh the mod stamps.
create or replace function base.ent_tf_biu() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        if new.ent_num is null then
            new.ent_num := nextval(format('base.ent_%s_seq', new.ent_type)::regclass);
        end if;
    else
        new.mod_date := current_timestamp;
        new.mod_by := session_user;
    end if;
    new.id := new.ent_type || new.ent_num::text;
    if new.username is null then
        new.conn_pub := null;
    end if;
    return new;
end;
$$;

do $$
begin
    if not exists (select 1 from pg_catalog.pg_trigger
                    where tgrelid = 'base.ent'::regclass and tgname = 'base_ent_tr_biu') then
        create trigger base_ent_tr_biu before insert or update on base.ent
            for each row execute function base.ent_tf_biu();
    end if;
end;
$$;

-- The entity view, with wyselib's derived name columns.
create or replace view base.ent_v as
select e.id, e.ent_num, e.conn_pub, e.ent_name, e.ent_type, e.ent_cmt, e.fir_name, e.mid_name
     , e.pref_name, e.title, e.born_date, e.username, e.ent_inact
     , e.crt_by, e.mod_by, e.crt_date, e.mod_date
     , case when e.fir_name is null then e.ent_name
            else e.ent_name || ', ' || coalesce(e.pref_name, e.fir_name) end      as std_name
     , e.ent_name || case when e.fir_name is null then ''
            else ', ' || coalesce(e.title || ' ', '') || e.fir_name
                 || coalesce(' ' || e.mid_name, '') end                           as frm_name
     , case when e.fir_name is null then ''
            else coalesce(e.pref_name, e.fir_name) || ' ' end || e.ent_name      as cas_name
     , e.fir_name || coalesce(' ' || e.mid_name, '')                             as giv_name
     , extract(year from age(e.born_date))                                       as age
  from base.ent e;

-- Identity helpers (security definer: callers need no rights on base.ent).
create or replace function base.curr_eid() returns text
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$ select id from base.ent where username = session_user $$;

create or replace function base.user_id(text) returns text
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$ select id from base.ent where username = $1 $$;

create or replace function base.username(text) returns text
  language sql stable security definer
  set search_path = pg_catalog, pg_temp
as $$ select username from base.ent where id = $1 $$;
