-- Profiles with a credit balance, and the append-only ledger that explains every change.
--
-- Invariant, for every user at every moment:
--   profiles.starting_credits - profiles.total_credits = -sum(credit_ledger.delta)
-- i.e. the balance is the trial credits plus every ledger delta (debits negative,
-- refunds and grants positive). Only SECURITY DEFINER functions of the contract write here.

create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  email text,
  display_name text check (char_length(display_name) <= 100),
  starting_credits integer not null check (starting_credits >= 0),
  total_credits integer not null check (total_credits >= 0),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

comment on column public.profiles.total_credits is
  'Current balance. Changed only through private.apply_credit_change, which writes the ledger.';

create type public.credit_entry_kind as enum ('debit', 'refund', 'grant');

create table public.credit_ledger (
  id bigint generated always as identity primary key,
  user_id uuid not null references public.profiles (id) on delete cascade,
  kind public.credit_entry_kind not null,
  delta integer not null check (delta <> 0),
  -- No foreign keys on purpose: ledger rows outlive a deleted batch or generation.
  batch_id uuid,
  generation_id uuid,
  note text,
  created_at timestamptz not null default now(),
  check ((kind = 'debit') = (delta < 0))
);
create index credit_ledger_user_id_idx on public.credit_ledger (user_id, id);
create index credit_ledger_batch_id_idx on public.credit_ledger (batch_id) where batch_id is not null;

-- Append-only: no UPDATE ever; DELETE only when the owning profile is deleted (cascade).
create function private.forbid_ledger_changes() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'DELETE' and pg_catalog.pg_trigger_depth() > 1 then
    return old;  -- cascaded from the profile's deletion
  end if;
  raise exception 'credit_ledger is append-only' using errcode = '42501';
end
$$;

create trigger credit_ledger_append_only
  before update or delete on public.credit_ledger
  for each row execute function private.forbid_ledger_changes();

-- The one place that moves credits: balance and ledger change together or not at all.
-- The CHECK on total_credits turns an overdraw into an error; callers lock the profile
-- and check first so the user gets insufficient_credits instead.
create function private.apply_credit_change(
  target_user uuid,
  entry_kind public.credit_entry_kind,
  amount integer,
  for_batch uuid default null,
  for_generation uuid default null,
  entry_note text default null
) returns integer
language plpgsql
set search_path = ''
as $$
declare
  new_balance integer;
begin
  update public.profiles
     set total_credits = total_credits + amount, updated_at = now()
   where id = target_user
  returning total_credits into new_balance;
  if not found then
    perform private.raise_error('profile_not_found', 404, 'No profile for this user.');
  end if;
  insert into public.credit_ledger (user_id, kind, delta, batch_id, generation_id, note)
  values (target_user, entry_kind, amount, for_batch, for_generation, entry_note);
  return new_balance;
end
$$;

-- A profile for every new auth user, with the trial credits of the moment.
-- SECURITY DEFINER: on Supabase the insert runs as supabase_auth_admin, which has no
-- rights on public.
create function private.handle_new_user() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  trial integer := coalesce(private.setting_int('trial_credits'), 0);
begin
  insert into public.profiles (id, email, starting_credits, total_credits)
  values (new.id, new.email, trial, trial)
  on conflict (id) do nothing;
  return new;
end
$$;

create trigger on_auth_user_created
  after insert on auth.users
  for each row execute function private.handle_new_user();

-- Users that existed before this migration get their profile too.
insert into public.profiles (id, email, starting_credits, total_credits)
select u.id, u.email, private.setting_int('trial_credits'), private.setting_int('trial_credits')
  from auth.users u
on conflict (id) do nothing;

-- Row level security: a user reads their own profile and ledger; writes go through functions.
alter table public.profiles enable row level security;
alter table public.credit_ledger enable row level security;

create policy profiles_select_own on public.profiles
  for select to authenticated
  using (id = (select auth.uid()));

create policy profiles_update_own on public.profiles
  for update to authenticated
  using (id = (select auth.uid()))
  with check (id = (select auth.uid()));

create policy credit_ledger_select_own on public.credit_ledger
  for select to authenticated
  using (user_id = (select auth.uid()));

revoke all on public.profiles, public.credit_ledger from anon, authenticated, service_role;
grant select on public.profiles, public.credit_ledger to authenticated;
-- The only column a user may change directly.
grant update (display_name) on public.profiles to authenticated;
grant select on public.profiles, public.credit_ledger to service_role;
grant update (display_name, email) on public.profiles to service_role;

revoke all on function private.forbid_ledger_changes() from public, anon, authenticated;
revoke all on function private.apply_credit_change(uuid, public.credit_entry_kind, integer, uuid, uuid, text)
  from public, anon, authenticated;
revoke all on function private.handle_new_user() from public, anon, authenticated;
