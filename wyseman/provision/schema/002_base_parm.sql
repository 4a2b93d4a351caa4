-- wyseman for Python: bootstrap schema, part 2: system parameters (base.parm).
--
-- Same table shape and function names as wyselib (schema/base/parm.wms): one row per
-- (module, parm), a declared type and exactly one v_<type> column set. The ticket
-- tooling reads wyseman/host and wyseman/port from here (base.token_v_ticket).

create table if not exists base.parm (
    module      text
  , parm        text
  , primary key (module, parm)
  , type        text        not null check (type in ('int', 'date', 'text', 'float', 'boolean'))
  , cmt         text
  , v_int       int         check ((type = 'int') = (v_int is not null))
  , v_date      date        check ((type = 'date') = (v_date is not null))
  , v_text      text        check ((type = 'text') = (v_text is not null))
  , v_float     float       check ((type = 'float') = (v_float is not null))
  , v_boolean   boolean     check ((type = 'boolean') = (v_boolean is not null))
  , crt_date    timestamptz not null default current_timestamp
  , mod_date    timestamptz not null default current_timestamp
  , crt_by      name        not null default session_user
  , mod_by      name        not null default session_user
);

create or replace view base.parm_v as
select module, parm, type, cmt
     , case type when 'int' then v_int::text
                 when 'date' then v_date::text
                 when 'text' then v_text
                 when 'float' then v_float::text
                 when 'boolean' then v_boolean::text end as value
     , crt_by, mod_by, crt_date, mod_date
  from base.parm;

-- Typed readers: the value, or null when the parameter is missing or of another type.
create or replace function base.parm_text(m text, p text) returns text
  language sql stable set search_path = pg_catalog, pg_temp
as $$ select v_text from base.parm where module = m and parm = p and type = 'text' $$;

create or replace function base.parm_int(m text, p text) returns int
  language sql stable set search_path = pg_catalog, pg_temp
as $$ select v_int from base.parm where module = m and parm = p and type = 'int' $$;

create or replace function base.parm_date(m text, p text) returns date
  language sql stable set search_path = pg_catalog, pg_temp
as $$ select v_date from base.parm where module = m and parm = p and type = 'date' $$;

create or replace function base.parm_float(m text, p text) returns float
  language sql stable set search_path = pg_catalog, pg_temp
as $$ select v_float from base.parm where module = m and parm = p and type = 'float' $$;

create or replace function base.parm_boolean(m text, p text) returns boolean
  language sql stable set search_path = pg_catalog, pg_temp
as $$ select v_boolean from base.parm where module = m and parm = p and type = 'boolean' $$;

-- Any parameter as text (wyselib's two-argument base.parm).
create or replace function base.parm(m text, p text) returns text
  language sql stable set search_path = pg_catalog, pg_temp
as $$ select value from base.parm_v where module = m and parm = p $$;

-- Upsert a parameter. The type is t, else the stored type, else derived from the SQL
-- type of v (so base.parmset('wyseman', 'port', 4100) stores an int), else text.
-- Returns v, like wyselib's parmset, so it can be used in a select list.
create or replace function base.parmset(m text, p text, v anyelement, t text default null)
  returns anyelement
  language plpgsql set search_path = pg_catalog, pg_temp
as $$
declare
    kind  text := t;
    val   text := v::text;
begin
    if kind is null then
        select type into kind from base.parm where module = m and parm = p;
    end if;
    if kind is null then
        kind := case pg_typeof(v)
                    when 'integer'::regtype then 'int'
                    when 'smallint'::regtype then 'int'
                    when 'bigint'::regtype then 'int'
                    when 'date'::regtype then 'date'
                    when 'double precision'::regtype then 'float'
                    when 'real'::regtype then 'float'
                    when 'numeric'::regtype then 'float'
                    when 'boolean'::regtype then 'boolean'
                    else 'text' end;
    end if;
    insert into base.parm as b (module, parm, type, v_int, v_date, v_text, v_float, v_boolean)
    values (m, p, kind,
            case when kind = 'int' then val::int end,
            case when kind = 'date' then val::date end,
            case when kind = 'text' then val end,
            case when kind = 'float' then val::float end,
            case when kind = 'boolean' then val::boolean end)
    on conflict (module, parm) do update
       set type = excluded.type, v_int = excluded.v_int, v_date = excluded.v_date,
           v_text = excluded.v_text, v_float = excluded.v_float,
           v_boolean = excluded.v_boolean,
           mod_date = current_timestamp, mod_by = session_user;
    return v;
end;
$$;

-- Text-valued variant for callers without typed literals (wyselib's parmsett).
create or replace function base.parmsett(m text, p text, v text, t text default null)
  returns text
  language sql set search_path = pg_catalog, pg_temp
as $$ select base.parmset(m, p, v, t) $$;

-- Defaults the ticket tooling expects (wyselib parm.wmi); an operator's values win.
-- No default port: `wyseman ticket` then names the port its config's server listens on
-- (set wyseman/port where clients reach it elsewhere, behind a proxy say). A placeholder
-- port an earlier version inserted, never changed, goes.
insert into base.parm (module, parm, type, v_text, cmt)
values ('wyseman', 'host', 'text', 'localhost', 'Host name put into connection tickets')
on conflict (module, parm) do nothing;
delete from base.parm
 where module = 'wyseman' and parm = 'port' and v_int = 54320
   and cmt = 'WebSocket port put into connection tickets';
