-- The styles catalogue. A style's cost, prompt and generator are data: change a row, not code.
--
-- Shipped here rather than in seed.sql because a hosted `supabase db push` never runs the
-- seed. Later catalogue changes belong in new migrations (upserts by key).

create table public.styles (
  key text primary key check (key ~ '^[a-z][a-z0-9_]{1,39}$'),
  name text not null check (char_length(name) between 1 and 80),
  category text not null check (char_length(category) between 1 and 40),
  description text not null default '',
  credit_cost integer not null check (credit_cost between 1 and 100),
  prompt_template text not null,
  -- Which generator renders the style, and with which model (the worker may override).
  generator text not null default 'local',
  model text,
  is_active boolean not null default true,
  sort_order integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index styles_active_order_idx on public.styles (category, sort_order) where is_active;

alter table public.styles enable row level security;

-- Everyone, signed in or not, may read the active catalogue (the style picker needs it).
create policy styles_select_active on public.styles
  for select to anon, authenticated
  using (is_active);

revoke all on public.styles from anon, authenticated, service_role;
grant select on public.styles to anon, authenticated;
grant select, insert, update on public.styles to service_role;

insert into public.styles (key, name, category, description, credit_cost, prompt_template, sort_order) values
  ('pencil_sketch', 'Pencil Sketch', 'Drawing', 'Graphite lines on paper.', 1,
   'a detailed graphite pencil sketch portrait, cross-hatching, paper texture. {prompt}', 10),
  ('charcoal', 'Charcoal', 'Drawing', 'Bold smudged charcoal strokes.', 1,
   'an expressive charcoal drawing portrait, deep blacks, smudged shading. {prompt}', 20),
  ('ink_wash', 'Ink Wash', 'Drawing', 'East-Asian sumi-e ink wash.', 2,
   'a sumi-e ink wash portrait, flowing brush strokes, rice paper. {prompt}', 30),
  ('watercolor', 'Watercolour', 'Painting', 'Soft washes that bleed at the edges.', 2,
   'a soft watercolour portrait, wet-on-wet washes, bleeding pigments. {prompt}', 10),
  ('oil_painting', 'Oil Painting', 'Painting', 'Thick impasto brushwork.', 3,
   'a classical oil painting portrait, impasto brushwork, warm glaze. {prompt}', 20),
  ('impressionist', 'Impressionist', 'Painting', 'Dabs of light and colour.', 3,
   'an impressionist portrait, visible dabs of colour, plein-air light. {prompt}', 30),
  ('pop_art', 'Pop Art', 'Graphic', 'Flat bold colours, screen-print look.', 2,
   'a pop-art screen print portrait, flat saturated colours, bold outlines. {prompt}', 10),
  ('comic_halftone', 'Comic Halftone', 'Graphic', 'Ink outlines and halftone dots.', 2,
   'a comic book panel portrait, inked outlines, halftone dot shading. {prompt}', 20),
  ('poster', 'Poster', 'Graphic', 'Few flat tones, posterised.', 1,
   'a minimalist posterised portrait, three flat tones, strong contrast. {prompt}', 30),
  ('pixel_art', 'Pixel Art', 'Digital', '16-bit game sprite look.', 1,
   'a 16-bit pixel art portrait, limited palette, crisp pixels. {prompt}', 10),
  ('neon_glow', 'Neon Glow', 'Digital', 'Glowing edges on a dark ground.', 2,
   'a neon synthwave portrait, glowing edges, dark background. {prompt}', 20),
  ('cartoon', 'Cartoon', 'Digital', 'Smooth shading and clean edges.', 2,
   'a clean cartoon portrait, smooth cel shading, clean edges. {prompt}', 30),
  ('vintage_photo', 'Vintage Photo', 'Photo', 'Faded sepia print with grain.', 1,
   'a faded vintage sepia photograph portrait, film grain, vignette. {prompt}', 10),
  ('noir', 'Film Noir', 'Photo', 'High-contrast black and white.', 1,
   'a high-contrast film noir portrait, hard shadows, black and white. {prompt}', 20),
  ('cyanotype', 'Cyanotype', 'Photo', 'Prussian-blue sun print.', 2,
   'a cyanotype sun print portrait, prussian blue tones, paper texture. {prompt}', 30);
