-- wyseman for Python: bootstrap schema, part 4: the data dictionary (wm.table_meta,
-- wm.table_lang) that the gateway's meta and lang actions read (docs/protocol.md,
-- 7.9 "meta" and 7.10 "lang").
--
-- wyseman computes these from pg_catalog plus text and style tables that its schema
-- compiler fills (lib/run_time.wms). Here the metadata comes from pg_catalog alone;
-- the text/style tables have wyseman's names and shapes, so texts can be loaded with
-- plain inserts, and are empty except for wm.lang's messages (file 005).

create table if not exists wm.table_style (
    ts_sch      name
  , ts_tab      name
  , sw_name     varchar     not null
  , sw_value    jsonb       not null
  , inherit     boolean     default true
  , primary key (ts_sch, ts_tab, sw_name)
);

create table if not exists wm.column_style (
    cs_sch      name
  , cs_tab      name
  , cs_col      name
  , sw_name     varchar     not null
  , sw_value    jsonb       not null
  , primary key (cs_sch, cs_tab, cs_col, sw_name)
);

create table if not exists wm.table_text (
    tt_sch      name
  , tt_tab      name
  , language    varchar     not null
  , title       varchar
  , help        varchar
  , primary key (tt_sch, tt_tab, language)
);

create table if not exists wm.column_text (
    ct_sch      name
  , ct_tab      name
  , ct_col      name
  , language    varchar     not null
  , title       varchar
  , help        varchar
  , primary key (ct_sch, ct_tab, ct_col, language)
);

create table if not exists wm.value_text (
    vt_sch      name
  , vt_tab      name
  , vt_col      name
  , value       varchar
  , language    varchar     not null
  , title       varchar
  , help        varchar
  , primary key (vt_sch, vt_tab, vt_col, value, language)
);

create table if not exists wm.message_text (
    mt_sch      name
  , mt_tab      name
  , code        varchar
  , language    varchar     not null
  , title       varchar
  , help        varchar
  , primary key (mt_sch, mt_tab, code, language)
);

-- A relation named wm.lang to hang the server's own messages on (clients translate
-- '!wm.lang:<code>' errors through the lang row of this view).
create or replace view wm.lang as select true as always;

-- Native source of each column of a relation. A table column is its own source. A
-- view column reads through the view's rewrite rule: its source is the column of the
-- same name, in a relation the rule depends on, followed through views of views down
-- to a table (tables preferred over views when several match). This is wyseman's
-- default_native() heuristic, computed on demand instead of cached.
-- PL/pgSQL rather than SQL for speed: its plans are cached for the session (the
-- gateway's admin connection is long-lived), which halves a lookup (~3 ms -> ~1.3 ms
-- with 200 tables); the row estimates keep the planner on index scans.
create or replace function wm.column_natives(rel oid)
  returns table (col name, field int2, nat_rel oid, nat_field int2)
  language plpgsql stable rows 20
  set search_path = pg_catalog, pg_temp
as $$
begin
    return query
    with recursive walk (col, field, rel, nat_field, depth) as (
        select a.attname, a.attnum, a.attrelid, a.attnum, 0
          from pg_attribute a
         where a.attrelid = column_natives.rel and a.attnum > 0 and not a.attisdropped
        union all
        select w.col, w.field, s.rel, s.nat_field, w.depth + 1
          from walk w
          cross join lateral (
              select d.refobjid as rel, ra.attnum as nat_field
                from pg_rewrite r
                join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
                                and d.refclassid = 'pg_class'::regclass
                                and d.refobjsubid > 0 and d.refobjid <> w.rel
                join pg_attribute ra on ra.attrelid = d.refobjid and ra.attnum = d.refobjsubid
                join pg_class rc on rc.oid = d.refobjid
               where r.ev_class = w.rel and r.rulename = '_RETURN' and ra.attname = w.col
               order by rc.relkind = 'v', d.refobjid
               limit 1) s
         where w.depth < 32
    )
    select distinct on (w.col) w.col, w.field, w.rel, w.nat_field
      from walk w
     order by w.col, w.depth desc;
end;
$$;

-- Everything wm.table_meta shows about one relation but its name: the primary key
-- (for a view: the columns whose native column is in its table's primary key),
-- column descriptions, display styles and foreign keys (for a view: the native
-- tables' foreign keys whose columns all appear in the view).
create or replace function wm.relation_meta(rel oid)
  returns table (pkey jsonb, columns jsonb, styles jsonb, fkeys jsonb)
  language plpgsql stable rows 1
  set search_path = pg_catalog, pg_temp
as $$
begin
    return query
    with rel_name as (
        select n.nspname as sch, c.relname as tab
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where c.oid = relation_meta.rel
    ), cols as (
        select cn.col, cn.field, t.typname as type, na.attnotnull as nonull
             , case when a.attlen < 0 then null else a.attlen end as length
             , coalesce(cn.nat_field = any (pk.conkey), false) as pkey
             , cn.nat_rel, cn.nat_field
             , ns.nspname as nat_sch, nc.relname as nat_tab, na.attname as nat_col
          from wm.column_natives(relation_meta.rel) cn
          join pg_attribute a on a.attrelid = relation_meta.rel and a.attnum = cn.field
          join pg_type t on t.oid = a.atttypid
          join pg_attribute na on na.attrelid = cn.nat_rel and na.attnum = cn.nat_field
          join pg_class nc on nc.oid = cn.nat_rel
          join pg_namespace ns on ns.oid = nc.relnamespace
          left join pg_constraint pk on pk.conrelid = cn.nat_rel and pk.contype = 'p'
    ), fk as (
        select co.oid, co.confrelid
             , array_agg(c.col order by k.ord) as local_cols
             , count(c.col) as found, cardinality(co.conkey) as wanted
             , (select array_agg(fa.attname order by fk2.ord)
                  from unnest(co.confkey) with ordinality fk2(attnum, ord)
                  join pg_attribute fa on fa.attrelid = co.confrelid
                                      and fa.attnum = fk2.attnum) as foreign_cols
          from pg_constraint co
          cross join lateral unnest(co.conkey) with ordinality k(attnum, ord)
          left join cols c on c.nat_rel = co.conrelid and c.nat_field = k.attnum
         where co.contype = 'f' and co.conrelid in (select nat_rel from cols)
         group by co.oid, co.confrelid, co.conkey, co.confkey
    )
    select
        (select jsonb_agg(c.col order by c.field) from cols c where c.pkey)
      , (select jsonb_agg(jsonb_build_object(
                    'col', c.col, 'field', c.field, 'type', c.type, 'nonull', c.nonull,
                    'length', c.length, 'pkey', c.pkey,
                    'values', (select jsonb_agg(distinct v.value)
                                 from wm.value_text v
                                where v.vt_sch = c.nat_sch and v.vt_tab = c.nat_tab
                                  and v.vt_col = c.nat_col),
                    'styles', coalesce(
                        -- the relation's own styles override its native column's
                        (select jsonb_object_agg(cs.sw_name, cs.sw_value
                                                 order by (cs.cs_sch, cs.cs_tab) = (r.sch, r.tab))
                           from wm.column_style cs
                          where (cs.cs_sch = r.sch and cs.cs_tab = r.tab and cs.cs_col = c.col)
                             or (cs.cs_sch = c.nat_sch and cs.cs_tab = c.nat_tab
                                 and cs.cs_col = c.nat_col)),
                        '{}'::jsonb))
                  order by c.field)
           from cols c)
      , (select jsonb_object_agg(ts.sw_name, ts.sw_value)
           from wm.table_style ts where ts.ts_sch = r.sch and ts.ts_tab = r.tab)
      , (select jsonb_agg(jsonb_build_object(
                    'table', fn.nspname || '.' || fc.relname,
                    'columns', to_jsonb(f.local_cols),
                    'foreign', to_jsonb(f.foreign_cols))
                  order by f.oid)
           from fk f
           join pg_class fc on fc.oid = f.confrelid
           join pg_namespace fn on fn.oid = fc.relnamespace
          where f.found = f.wanted)
      from rel_name r;
end;
$$;

-- One row per table, view, materialized view, partitioned or foreign table outside
-- the system schemas. The expensive part is a lateral call per row: a lookup by obj
-- filters pg_class/pg_namespace first, so only the matching relation is described.
create or replace view wm.table_meta as
select n.nspname                    as sch
     , c.relname                    as tab
     , n.nspname || '.' || c.relname as obj
     , c.relkind::text              as tab_kind
     , m.pkey is not null           as has_pkey
     , m.pkey
     , c.relnatts::int              as cols
     , m.columns
     , m.styles
     , m.fkeys
  from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  cross join lateral wm.relation_meta(c.oid) m
 where c.relkind in ('r', 'v', 'm', 'p', 'f')
   and n.nspname not in ('pg_catalog', 'information_schema')
   and n.nspname not like 'pg\_toast%'
   and n.nspname not like 'pg\_temp%';

-- Texts of one relation in one language: only relations that exist and have a
-- wm.table_text row in that language (anything else answers badTuples, as in wyseman).
-- Every column of the relation is listed; its title falls back to the native
-- column's text, then to the column name.
create or replace view wm.table_lang as
select tt.tt_sch                        as sch
     , tt.tt_tab                        as tab
     , tt.tt_sch || '.' || tt.tt_tab    as obj
     , tt.language
     , tt.title
     , tt.help
     , (select jsonb_agg(jsonb_build_object(
                   'col', cn.col,
                   'title', coalesce(ct.title, nt.title, cn.col::text),
                   'help', coalesce(ct.help, nt.help),
                   'values', (select jsonb_agg(jsonb_build_object(
                                         'value', v.value, 'title', v.title, 'help', v.help)
                                       order by v.value)
                                from wm.value_text v
                               where v.vt_sch = ns.nspname and v.vt_tab = nc.relname
                                 and v.vt_col = na.attname and v.language = tt.language))
                 order by cn.field)
          from wm.column_natives(c.oid) cn
          join pg_catalog.pg_attribute na on na.attrelid = cn.nat_rel and na.attnum = cn.nat_field
          join pg_catalog.pg_class nc on nc.oid = cn.nat_rel
          join pg_catalog.pg_namespace ns on ns.oid = nc.relnamespace
          left join wm.column_text ct on ct.ct_sch = tt.tt_sch and ct.ct_tab = tt.tt_tab
                                     and ct.ct_col = cn.col and ct.language = tt.language
          left join wm.column_text nt on nt.ct_sch = ns.nspname and nt.ct_tab = nc.relname
                                     and nt.ct_col = na.attname and nt.language = tt.language
       )                                as columns
     , (select jsonb_agg(jsonb_build_object('code', mt.code, 'title', mt.title, 'help', mt.help)
                         order by mt.code)
          from wm.message_text mt
         where mt.mt_sch = tt.tt_sch and mt.mt_tab = tt.tt_tab
           and mt.language = tt.language)  as messages
  from wm.table_text tt
  join pg_catalog.pg_namespace n on n.nspname = tt.tt_sch
  join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = tt.tt_tab
 where c.relkind in ('r', 'v', 'm', 'p', 'f');

-- Signal that the schema changed: the gateway drops its meta/lang caches on any
-- notification of the 'wyseman' channel (docs/protocol.md, 7.10 "lang"). Nothing here
-- is cached, so "refreshing the dictionary" is only the notification; the name and
-- payload are wyseman's, so scripts written for wyseman keep working.
create or replace function wm.init_dictionary() returns boolean
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
    perform pg_notify('wyseman', '{"target":"dict"}');
    return true;
end;
$$;
