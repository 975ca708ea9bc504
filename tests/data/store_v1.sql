-- A store written by SteerLab 0.1 (schema version 1, main at c27fd2e), kept as text so that every
-- later SteerLab is tested on upgrading it in place. It holds two duplicate votes (one rater,
-- two tabs), which 0.1 could store and the upgrade must reduce to one.
BEGIN TRANSACTION;
CREATE TABLE experiments (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	description TEXT NOT NULL, 
	model_id VARCHAR(500) NOT NULL, 
	spec_json TEXT NOT NULL, 
	definition_hash VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
INSERT INTO "experiments" VALUES(1,'legacy_mood','made by SteerLab 0.1','raincandy-u/TinyStories-656K','{"name": "legacy_mood", "model": "raincandy-u/TinyStories-656K", "description": "made by SteerLab 0.1", "prompts": ["Once upon a time", "The cat"], "generation": {"max_new_tokens": 8, "do_sample": false, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0, "samples_per_prompt": 1}, "vectors": {}, "variants": [{"name": "baseline", "kind": "baseline"}, {"name": "prompt_sad", "kind": "prompting", "prefix": "This is a sad story. "}]}','hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh','2026-11-25 15:10:18.636346');
CREATE TABLE generation_metrics (
	id INTEGER NOT NULL, 
	generation_id INTEGER NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	value FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (generation_id, name), 
	FOREIGN KEY(generation_id) REFERENCES generations (id) ON DELETE CASCADE
);
INSERT INTO "generation_metrics" VALUES(1,1,'sad_words',0.25);
CREATE TABLE generations (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	run_id INTEGER, 
	variant_id INTEGER NOT NULL, 
	prompt_id INTEGER NOT NULL, 
	sample_index INTEGER NOT NULL, 
	text TEXT NOT NULL, 
	token_count INTEGER NOT NULL, 
	seconds FLOAT NOT NULL, 
	peak_memory_bytes INTEGER NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (variant_id, prompt_id, sample_index), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE, 
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE SET NULL, 
	FOREIGN KEY(variant_id) REFERENCES variants (id) ON DELETE CASCADE, 
	FOREIGN KEY(prompt_id) REFERENCES prompts (id) ON DELETE CASCADE
);
INSERT INTO "generations" VALUES(1,1,1,1,1,0,'text 00',5,0.1,1000,'2026-11-25 15:10:18.647230');
INSERT INTO "generations" VALUES(2,1,1,1,2,0,'text 01',5,0.1,1000,'2026-11-25 15:10:18.647234');
INSERT INTO "generations" VALUES(3,1,1,2,1,0,'text 10',5,0.1,1000,'2026-11-25 15:10:18.647235');
INSERT INTO "generations" VALUES(4,1,1,2,2,0,'text 11',5,0.1,1000,'2026-11-25 15:10:18.647236');
CREATE TABLE meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO "meta" VALUES('schema_version','1');
CREATE TABLE prompts (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	position INTEGER NOT NULL, 
	text TEXT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, position), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "prompts" VALUES(1,1,0,'Once upon a time');
INSERT INTO "prompts" VALUES(2,1,1,'The cat');
CREATE TABLE ratings (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	rater VARCHAR(200) NOT NULL, 
	left_generation_id INTEGER NOT NULL, 
	right_generation_id INTEGER NOT NULL, 
	choice VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT rating_choice CHECK (choice IN ('left', 'right', 'tie', 'both_bad')), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE, 
	FOREIGN KEY(left_generation_id) REFERENCES generations (id) ON DELETE CASCADE, 
	FOREIGN KEY(right_generation_id) REFERENCES generations (id) ON DELETE CASCADE
);
INSERT INTO "ratings" VALUES(1,1,'erin',1,3,'left','2026-11-25 15:10:18.657033');
INSERT INTO "ratings" VALUES(2,1,'erin',3,1,'right','2026-11-25 15:10:18.662195');
INSERT INTO "ratings" VALUES(3,1,'sam',2,4,'tie','2026-11-25 15:10:18.662614');
CREATE TABLE runs (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	total_units INTEGER NOT NULL, 
	done_units INTEGER NOT NULL, 
	start_done INTEGER NOT NULL, 
	batch_size INTEGER NOT NULL, 
	device VARCHAR(32) NOT NULL, 
	dtype VARCHAR(32) NOT NULL, 
	cancel_requested BOOLEAN NOT NULL, 
	owner VARCHAR(200) NOT NULL, 
	error TEXT NOT NULL, 
	started_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT run_status CHECK (status IN ('running', 'done', 'cancelled', 'failed', 'interrupted')), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "runs" VALUES(1,1,'done',4,4,0,8,'cpu','float32',0,'host:1','','2026-11-25 15:10:18.640112','2026-11-25 15:10:18.649163','2026-11-25 15:10:18.649160');
CREATE TABLE variant_metrics (
	id INTEGER NOT NULL, 
	variant_id INTEGER NOT NULL, 
	run_id INTEGER, 
	name VARCHAR(100) NOT NULL, 
	value FLOAT NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (variant_id, name), 
	FOREIGN KEY(variant_id) REFERENCES variants (id) ON DELETE CASCADE, 
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE SET NULL
);
INSERT INTO "variant_metrics" VALUES(1,1,1,'fluency_ppl',12.5,'2026-11-25 15:10:18.657523');
CREATE TABLE variants (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	position INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	kind VARCHAR(64) NOT NULL, 
	spec_json TEXT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, name), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "variants" VALUES(1,1,0,'baseline','baseline','{"name": "baseline", "kind": "baseline"}');
INSERT INTO "variants" VALUES(2,1,1,'prompt_sad','prompting','{"name": "prompt_sad", "kind": "prompting", "prefix": "This is a sad story. "}');
CREATE TABLE vectors (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	spec_json TEXT NOT NULL, 
	data BLOB, 
	model_id VARCHAR(500) NOT NULL, 
	hidden_size INTEGER, 
	method VARCHAR(64) NOT NULL, 
	pairs_hash VARCHAR(64) NOT NULL, 
	extraction_seconds FLOAT, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, name), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
CREATE INDEX ix_prompts_experiment_id ON prompts (experiment_id);
CREATE INDEX ix_vectors_experiment_id ON vectors (experiment_id);
CREATE INDEX ix_variants_experiment_id ON variants (experiment_id);
CREATE INDEX ix_runs_experiment_id ON runs (experiment_id);
CREATE INDEX ix_generations_variant_id ON generations (variant_id);
CREATE INDEX ix_generations_experiment_id ON generations (experiment_id);
CREATE INDEX ix_generations_prompt_id ON generations (prompt_id);
CREATE INDEX ix_variant_metrics_variant_id ON variant_metrics (variant_id);
CREATE INDEX ix_generation_metrics_generation_id ON generation_metrics (generation_id);
CREATE INDEX ix_ratings_experiment_id ON ratings (experiment_id);
COMMIT;
