-- wyseman for Python: bootstrap schema, part 3: one-time login tokens (tickets).
--
-- Shapes follow wyselib 1.1.0 (schema/base/login.wms). Differences, on purpose:
-- * used/expires are timestamptz, so issuing and checking sessions need not share a
--   TimeZone setting (docs/protocol.md, 12.2 "Users, tickets and keys");
-- * tokens come from gen_random_uuid() (a strong random source, PostgreSQL >= 13)
--   instead of md5(random());
-- * base.token_valid is atomic (D6) and refuses keys that are not P-521 public JWKs (D23).

create table if not exists base.token (
    token_ent   text        references base.ent on update cascade on delete cascade
  , token_seq   int
  , primary key (token_ent, token_seq)
  , token       text        not null unique
  , allows      varchar(8)  not null default 'login'
  , used        timestamptz
  , expires     timestamptz(0) default current_timestamp + interval '30 minutes'
  , crt_date    timestamptz not null default current_timestamp
  , mod_date    timestamptz not null default current_timestamp
  , crt_by      name        not null default session_user
  , mod_by      name        not null default session_user
);

-- Number tokens per entity and draw a fresh random token. The entity row is locked
-- first so that two tickets issued at once for one user cannot both take max()+1.
create or replace function base.token_tf_bi() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
    if new.token_seq is null then
        perform 1 from base.ent where id = new.token_ent for update;
        select coalesce(max(token_seq), 0) + 1 into new.token_seq
          from base.token where token_ent = new.token_ent;
    end if;
    if new.token is null then
        loop
            new.token := md5(gen_random_uuid()::text || gen_random_uuid()::text);
            exit when not exists (select 1 from base.token where token = new.token);
        end loop;
    end if;
    return new;
end;
$$;

do $$
begin
    if not exists (select 1 from pg_catalog.pg_trigger
                    where tgrelid = 'base.token'::regclass and tgname = 'base_token_tr_bi') then
        create trigger base_token_tr_bi before insert on base.token
            for each row execute function base.token_tf_bi();
    end if;
end;
$$;

create or replace view base.token_v as
select t.token_ent, t.token_seq, t.token, t.allows, t.used, t.expires
     , t.crt_by, t.mod_by, t.crt_date, t.mod_date
     , t.expires <= current_timestamp                        as expired
     , t.expires > current_timestamp and t.used is null      as valid
     , e.username
     , e.std_name
  from base.token t
  join base.ent_v e on e.id = t.token_ent;

-- What a ticket carries. A simple view over base.token, hence insertable: ticket_login
-- inserts (token_ent, allows) and gets the whole row back.
create or replace view base.token_v_ticket as
select t.token_ent, t.allows, t.token, t.expires
     , base.parm_text('wyseman', 'host')  as host
     , base.parm_int('wyseman', 'port')   as port
     , base.parm_text('wyseman', 'addr')  as addr
     , base.parm_text('wyseman', 'boot')  as boot
  from base.token t;

-- Issue a login ticket for an entity id (not a username: use base.user_id()).
create or replace function base.ticket_login(uid text) returns base.token_v_ticket
  language sql security definer
  set search_path = pg_catalog, pg_temp
as $$
    insert into base.token_v_ticket (token_ent, allows) values (uid, 'login') returning *;
$$;

-- Check a login ticket and remember the user's new public key.
--
-- Semantics of wyselib 1.1.0: only the newest 'login' token of the user counts; it
-- must be unused, unexpired and equal to tok; then it is marked used and pub is stored
-- with jsonb_set(conn_pub, path, pub) (the default path gives {"default": jwk}).
-- Differences: the token row is locked (select ... for update), so of two concurrent
-- calls with one token exactly one succeeds (D6); pub must be an EC P-521 public JWK,
-- without a private part 'd' (D23); a path that jsonb_set cannot create (missing
-- intermediate object) fails instead of silently storing nothing.
create or replace function base.token_valid(uname text, tok text, pub jsonb,
                                            path text[] default '{default}')
  returns boolean
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
    rec     record;
    stored  jsonb;
begin
    if pub is null or jsonb_typeof(pub) <> 'object'
       or pub->>'kty' is distinct from 'EC' or pub->>'crv' is distinct from 'P-521'
       or jsonb_typeof(pub->'x') is distinct from 'string'
       or jsonb_typeof(pub->'y') is distinct from 'string'
       or pub ? 'd'
       or path is null or cardinality(path) = 0 or array_position(path, null) is not null then
        return false;
    end if;

    select t.token_ent, t.token_seq, t.token, t.used, t.expires, e.conn_pub
      into rec
      from base.token t
      join base.ent e on e.id = t.token_ent
     where e.username = uname and t.allows = 'login'
     order by t.token_seq desc
     limit 1
       for update of t;

    if not found or rec.used is not null or not (rec.expires > current_timestamp)
       or rec.token is distinct from tok then
        return false;
    end if;

    stored := case when jsonb_typeof(rec.conn_pub) = 'object' then rec.conn_pub
                   else '{}'::jsonb end;
    stored := jsonb_set(stored, path, pub, true);
    if stored #> path is distinct from pub then
        return false;
    end if;

    update base.token set used = current_timestamp, mod_date = current_timestamp,
                          mod_by = session_user
     where token_ent = rec.token_ent and token_seq = rec.token_seq;
    update base.ent set conn_pub = stored where id = rec.token_ent;
    return true;
end;
$$;

-- Marker read by wyseman.provision.bootstrap: a token_valid without it is someone else's.
comment on function base.token_valid(text, text, jsonb, text[]) is
    'wyseman-python bootstrap: atomic one-time ticket check (docs/protocol.md 12.2, D6, D23)';
